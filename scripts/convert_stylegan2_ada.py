"""Convert an official StyleGAN2-ADA pickle to ``.safetensors`` + ``.json``, without running it.

NVlabs/stylegan2-ada-pytorch saves networks as pickles of ``torch_utils.persistence`` objects:
each module is pickled as ``_reconstruct_persistent_obj(meta)`` where ``meta`` holds the source
code of its Python module (executed by the official loader!) and its ``__dict__`` (parameters,
buffers, submodules, constructor arguments). This script never executes that source. It reads
the pickle with a restricted unpickler that

- maps ``torch_utils.persistence._reconstruct_persistent_obj`` to a function that only keeps
  ``meta`` (the captured state),
- allows the functions that rebuild tensors (``torch._utils._rebuild_tensor_v2``,
  ``_rebuild_parameter``; storages are read back with ``torch.load(weights_only=True)``),
  ``collections.OrderedDict``, ``dnnlib.util.EasyDict`` (read as a dict), built-in sets and
  ``_codecs.encode`` for latin-1 byte strings, and numpy scalars, dtypes and arrays (read as
  opaque placeholders: never needed),
- refuses every other global, naming it.

It then walks ``G_ema``'s captured ``_parameters``, ``_buffers`` and ``_modules`` into a flat
state dict under the official names (``mapping.fc0.weight``, ``synthesis.b4.const``, ...),
writes it as ``<out>.safetensors`` and the hyperparameters (``z_dim``, ``w_dim``,
``img_resolution``, ``img_channels``, ``channel_base``, ``channel_max``, ``mapping_layers``,
``conv_clamp``, ``c_dim``) as ``<out>.json``, which
:func:`mibench_lib.generators.stylegan.load_stylegan2_ada` loads strictly. Only unconditional
("skip") generators are accepted.

Run it once on a pickle you trust::

    python scripts/convert_stylegan2_ada.py ffhq.pkl weights/ffhq_g_ema
"""

from __future__ import annotations

import argparse
import codecs
import collections
import io
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class CapturedObject:
    """What a persistent object is read as: its ``meta`` (class name, captured ``state``)."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)

    @property
    def class_name(self) -> str:
        return str(self.meta.get("class_name", "?"))

    @property
    def state(self) -> dict[str, Any]:
        return dict(self.meta.get("state") or {})


class _Opaque:
    """A placeholder for numpy values (accepts any arguments and state, keeps nothing)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _opaque(*args: Any, **kwargs: Any) -> _Opaque:
    return _Opaque()


class _EasyDict(dict):
    """``dnnlib.util.EasyDict`` read as a plain dict."""


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> CapturedObject:
    return CapturedObject(meta)


def _load_from_bytes(b: bytes) -> Any:
    return torch.load(io.BytesIO(b), weights_only=True)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _rebuild_parameter(data: Tensor, requires_grad: bool, backward_hooks: Any, *state: Any):
    return data


#: (module, name) -> what it is read as. Everything else is refused.
ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("numpy.core.multiarray", "scalar"): _opaque,
    ("numpy._core.multiarray", "scalar"): _opaque,
    ("numpy.core.multiarray", "_reconstruct"): _opaque,
    ("numpy._core.multiarray", "_reconstruct"): _opaque,
    ("numpy", "dtype"): _Opaque,
    ("numpy", "ndarray"): _Opaque,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of :data:`ALLOWED`; raises ``UnpicklingError`` naming others."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: not a tensor, container or persistence "
                f"record of a StyleGAN2-ADA pickle"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refused persistent id {pid!r}")


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`."""
    with open(path, "rb") as fh:
        return RestrictedUnpickler(fh).load()


def state_dict_of(obj: CapturedObject, prefix: str = "") -> dict[str, Tensor]:
    """The flat state dict of a captured module (persistent buffers and parameters)."""
    state = obj.state
    out: dict[str, Tensor] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, CapturedObject):
            raise ValueError(
                f"submodule {prefix + name} is not a persistence record: {type(child).__name__}"
            )
        out.update(state_dict_of(child, prefix + name + "."))
    return out


def _infer_channels(state: dict[str, Tensor], resolution: int) -> tuple[int, int]:
    """(channel_base, channel_max) consistent with the synthesis blocks' widths."""
    widths = {}
    r = 4
    while r <= resolution:
        widths[r] = int(state[f"synthesis.b{r}.conv1.weight"].shape[0])
        r *= 2
    cmax = max(widths.values())
    below = [r for r, c in widths.items() if c < cmax]
    base = widths[min(below)] * min(below) if below else cmax * 4
    if any(min(base // r, cmax) != c for r, c in widths.items()):
        raise ValueError(f"channel widths {widths} do not follow min(base // r, max)")
    return base, cmax


def extract_generator(obj: Any, key: str = "G_ema") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``G_ema``'s state dict and hyperparameters from an unpickled StyleGAN2-ADA file."""
    if isinstance(obj, dict):
        if key not in obj:
            raise ValueError(f"the pickle has no {key!r}; keys: {sorted(obj)}")
        obj = obj[key]
    if not isinstance(obj, CapturedObject):
        raise ValueError(f"{key} is not a persistence record")
    if obj.class_name != "Generator":
        raise ValueError(f"{key} is a {obj.class_name}, not a Generator")
    state = {k: v.detach().float().contiguous() for k, v in state_dict_of(obj).items()}
    kw = dict(obj.state.get("_init_kwargs") or {})
    args = list(obj.state.get("_init_args") or ())
    for i, name in enumerate(("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")):
        if i < len(args):
            kw.setdefault(name, args[i])
    mapping_kwargs = dict(kw.get("mapping_kwargs") or {})
    synthesis_kwargs = dict(kw.get("synthesis_kwargs") or {})
    c_dim = int(kw.get("c_dim", 0))
    if c_dim != 0 or "mapping.embed.weight" in state:
        raise ValueError(f"conditional generators are not supported (c_dim={c_dim})")
    arch = synthesis_kwargs.get("architecture", "skip")
    if arch != "skip":
        raise ValueError(f"only the 'skip' synthesis architecture is supported, got {arch!r}")
    fc = sorted(int(m.group(1)) for k in state if (m := re.match(r"mapping\.fc(\d+)\.weight$", k)))
    resolution = int(kw.get("img_resolution") or max(
        int(m.group(1)) for k in state if (m := re.match(r"synthesis\.b(\d+)\.", k))
    ))  # fmt: skip
    base, cmax = _infer_channels(state, resolution)
    hparams = {
        "z_dim": int(kw.get("z_dim") or state["mapping.fc0.weight"].shape[1]),
        "c_dim": 0,
        "w_dim": int(kw.get("w_dim") or state["mapping.w_avg"].shape[0]),
        "img_resolution": resolution,
        "img_channels": int(
            kw.get("img_channels") or state[f"synthesis.b{resolution}.torgb.weight"].shape[0]
        ),
        "channel_base": int(synthesis_kwargs.get("channel_base", base)),
        "channel_max": int(synthesis_kwargs.get("channel_max", cmax)),
        "mapping_layers": int(mapping_kwargs.get("num_layers", len(fc))),
        "conv_clamp": synthesis_kwargs.get("conv_clamp"),
    }
    if hparams["conv_clamp"] is not None:
        hparams["conv_clamp"] = float(hparams["conv_clamp"])
    for name in ("lr_multiplier", "w_avg_beta"):
        if mapping_kwargs.get(name) is not None:
            out = "mapping_lr_multiplier" if name == "lr_multiplier" else name
            hparams[out] = float(mapping_kwargs[name])
    return state, hparams


def convert(pkl: str | Path, out: str | Path, key: str = "G_ema") -> tuple[Path, Path]:
    """Write ``<out>.safetensors`` and ``<out>.json`` from the pickle ``pkl``."""
    from safetensors.torch import save_file

    state, hparams = extract_generator(restricted_load(pkl), key)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    st, js = out.with_suffix(".safetensors"), out.with_suffix(".json")
    save_file({k: v.clone() for k, v in state.items()}, str(st))
    js.write_text(json.dumps(hparams, indent=1) + "\n")
    return st, js


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pkl", help="official StyleGAN2-ADA network pickle (trusted)")
    parser.add_argument("out", help="output path without suffix (.safetensors and .json)")
    parser.add_argument("--key", default="G_ema", help="network in the pickle (default G_ema)")
    args = parser.parse_args(argv)
    st, js = convert(args.pkl, args.out, args.key)
    print(f"wrote {st} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
