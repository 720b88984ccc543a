"""Load a user's LOCAL checkpoint into a zoo model: never downloads, never unpickles objects.

Pretrained targets, evaluators and backbones (ImageNet VGG16-BN, MS-Celeb-1M IR-152/IR-50, the
GMI/KEDMI/PLG-MI target checkpoints) cannot be fetched on the benchmark machines, so a user who has
such a file passes its path here. Supported files:

- ``.safetensors``: read with ``safetensors.torch.load_file``;
- ``.pt``, ``.pth``, ``.tar``, ``.ckpt``, ``.bin``: read with
  ``torch.load(..., weights_only=True)``, which accepts tensors and plain containers only and
  refuses pickled classes or functions.

Common wrappers are removed: a top-level ``{"state_dict": ...}``, ``{"model_state_dict": ...}``,
``{"model": ...}`` or ``{"net": ...}`` dict, and the ``module.`` (DataParallel) and ``_orig_mod.``
(torch.compile) key prefixes. Key renames (e.g. ``{"fc_layer.": "head."}`` for the literature's
checkpoints, see ``LITERATURE_KEY_MAP``) are prefix substitutions.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

# The GMI/KEDMI/PLG-MI/TL-DMI classifiers name the head ``fc_layer``; everything else matches the
# zoo's VGG16_64, IR152_64 and FaceNet64.
LITERATURE_KEY_MAP: dict[str, str] = {"fc_layer.": "head."}

_TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 10  # keys listed in an error message before "... and N more"


class LoadSummary(TypedDict):
    """What a load did: file identity and key bookkeeping."""

    path: str
    sha256: str  # hex digest of the file's bytes
    loaded: int  # number of tensors copied into the model
    missing: list[str]  # sorted model keys the file did not provide
    unexpected: list[str]  # sorted file keys (after renaming) the model does not have
    skipped: list[str]  # sorted file keys deliberately left out (the head, for a backbone load)


def load_local_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = True,
    key_map: Mapping[str, str] | None = None,
    prefix: str | None = None,
) -> LoadSummary:
    """Copy the tensors of a local checkpoint into ``model`` (in place) and report what happened.

    Keys are processed in this order: unwrap the container and strip ``module.``/``_orig_mod.``;
    if ``prefix`` is given keep only keys starting with it and remove it; then rename with
    ``key_map``. BatchNorm ``num_batches_tracked`` counters are never required (old checkpoints
    lack them).

    Args:
        model: Any module, usually a zoo ``Classifier``; changed in place.
        path: Local ``.safetensors`` or ``.pt``/``.pth``/``.tar``/``.ckpt``/``.bin`` file.
        strict: Raise when the model has keys the file lacks or the file has keys the model lacks.
            With ``strict=False`` these are only reported in the summary.
        key_map: ``{file prefix: model prefix}`` renames; the longest matching prefix wins and
            ``""`` matches every key (e.g. ``{"": "net."}`` to load a bare torchvision ResNet).
        prefix: Use only the file's keys under this prefix (e.g. ``"backbone."``), prefix removed.

    Returns:
        ``LoadSummary`` dict: ``path``, ``sha256``, ``loaded`` (count), ``missing``,
        ``unexpected`` and ``skipped`` (empty here) key lists.

    Raises:
        FileNotFoundError: ``path`` does not exist (nothing is ever downloaded).
        ValueError: unsupported suffix; a file holding pickled objects other than tensors; no state
            dict found in it; tensors whose shapes differ from the model's (each key is named with
            both shapes; nothing is loaded); with ``strict``, missing or unexpected keys (listed).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from safetensors.torch import save_file
        >>> from mibench_lib.testing import TinyClassifier
        >>> src, dst = TinyClassifier(), TinyClassifier()
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_file(src.state_dict(), Path(tmp) / "tiny.safetensors")
        ...     summary = load_local_weights(dst, Path(tmp) / "tiny.safetensors")
        >>> summary["loaded"], summary["missing"], summary["unexpected"]
        (16, [], [])
    """
    return _load(model, Path(path), strict=strict, key_map=key_map, prefix=prefix, skip_head=False)


def load_backbone_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = True,
    key_map: Mapping[str, str] | None = None,
    prefix: str | None = None,
) -> LoadSummary:
    """Like :func:`load_local_weights`, but into everything except ``model.head``.

    For transfer learning (TL-DMI): a public backbone (ImageNet VGG16-BN, MS-Celeb-1M IR-152) is
    loaded while the K-class head keeps its fresh initialisation. File keys that map onto
    ``head.*`` are skipped (listed in ``skipped``), and the head's own keys are never "missing".

    Args:
        model: A module with a ``head`` submodule (every zoo ``Classifier``); changed in place.
        path: Local checkpoint, as for :func:`load_local_weights`.
        strict: Raise on missing non-head model keys or on unexpected file keys.
        key_map: Prefix renames, as for :func:`load_local_weights`. For example, a face.evoLVe
            MS-Celeb-1M backbone file (keys ``input_layer.*``, ``body.*``, ``output_layer.*``)
            goes into an ``IRNet64`` with ``{"input_layer.": "feature.input_layer.", "body.":
            "feature.body."}`` and ``strict=False`` (its 112-px output layer does not fit 64 px).
        prefix: Use only the file's keys under this prefix, prefix removed.

    Returns:
        ``LoadSummary`` dict, ``skipped`` listing the file keys that targeted the head.

    Raises:
        AttributeError: ``model`` has no ``head``.
        FileNotFoundError, ValueError: as for :func:`load_local_weights`.
    """
    if not isinstance(getattr(model, "head", None), nn.Module):
        raise AttributeError(f"{type(model).__name__} has no `head` submodule to leave out")
    return _load(model, Path(path), strict=strict, key_map=key_map, prefix=prefix, skip_head=True)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a local checkpoint into a flat ``{key: tensor}`` dict, wrappers removed.

    Args:
        path: ``.safetensors`` or ``.pt``/``.pth``/``.tar``/``.ckpt``/``.bin`` file.

    Returns:
        The state dict, with ``module.`` / ``_orig_mod.`` key prefixes stripped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported suffix, pickled non-tensor objects, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(path)!r} not found: put a local checkpoint (.safetensors, .pt, "
            f".pth or .tar) at this path; mibench never downloads weights"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        obj: object = load_file(str(path), device="cpu")
    elif suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"refused to load {str(path)!r}: it holds pickled objects other than tensors and "
                f"plain containers, and arbitrary objects are never unpickled (weights_only=True). "
                f"Re-save it as torch.save(model.state_dict(), ...) or as .safetensors"
            ) from err
    else:
        raise ValueError(
            f"unsupported weights file suffix {path.suffix!r} for {str(path)!r}; expected "
            f".safetensors or one of {list(_TORCH_SUFFIXES)}"
        )
    state = _unwrap(obj, path)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for wrapper in _WRAPPER_PREFIXES:
            if key.startswith(wrapper):
                key = key[len(wrapper) :]
        out[key] = value
    return out


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    """Descend through ``{"state_dict": ...}``-style containers to a dict of tensors."""
    while isinstance(obj, Mapping):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = obj[inner]
    found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"no state dict of tensors found in {str(path)!r}: expected a dict of tensors, possibly "
        f"under one of {list(_CONTAINER_KEYS)}; found {found}"
    )


def _rename(key: str, key_map: Mapping[str, str]) -> str:
    """Apply the longest matching ``{old prefix: new prefix}`` rule to ``key``."""
    matches = [old for old in key_map if key.startswith(old)]
    if not matches:
        return key
    old = max(matches, key=len)
    return key_map[old] + key[len(old) :]


def _listing(keys: list[str]) -> str:
    """``[k1, ..., k10] and N more`` for error messages."""
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{keys[:_SHOWN]}{more}"


def _load(
    model: nn.Module,
    path: Path,
    *,
    strict: bool,
    key_map: Mapping[str, str] | None,
    prefix: str | None,
    skip_head: bool,
) -> LoadSummary:
    """Shared body of the two public loaders."""
    state = read_state_dict(path)
    if prefix is not None:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"no key of {str(path)!r} starts with prefix {prefix!r}")
    if key_map:
        renamed = {_rename(k, key_map): v for k, v in state.items()}
        if len(renamed) != len(state):
            raise ValueError(f"key_map {dict(key_map)} maps two keys of {str(path)!r} to one")
        state = renamed

    def is_head(key: str) -> bool:
        return skip_head and key.startswith("head.")

    skipped = sorted(k for k in state if is_head(k))
    state = {k: v for k, v in state.items() if not is_head(k)}
    own = model.state_dict()
    bad = [
        f"{k!r}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sorted(state.items())
        if k in own and own[k].shape != v.shape
    ]
    if bad:
        raise ValueError(
            f"shape mismatch between {str(path)!r} and {type(model).__name__} for {len(bad)} "
            f"keys: {'; '.join(bad[:_SHOWN])}"
        )
    missing = sorted(
        k
        for k in own
        if k not in state and not is_head(k) and not k.endswith("num_batches_tracked")
    )
    unexpected = sorted(k for k in state if k not in own)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{str(path)!r} does not match {type(model).__name__}: {len(missing)} model keys "
            f"missing from the file {_listing(missing)}; {len(unexpected)} unexpected file keys "
            f"{_listing(unexpected)}. Rename with key_map/prefix, or pass strict=False"
        )
    matched = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(matched, strict=False)
    return LoadSummary(
        path=str(path),
        sha256=file_sha256(path),
        loaded=len(matched),
        missing=missing,
        unexpected=unexpected,
        skipped=skipped,
    )
