"""Content-addressed cache of trained artifacts (targets, evaluators, generators).

An artifact is identified by a hash of everything that determines it: a JSON-serialisable
``config`` (data fingerprint, split, architecture, seed, hyperparameters) plus the ``kind`` and a
``recipe`` version that is bumped whenever the training code changes meaning. A rerun with the same
config loads the artifact; any changed field trains a new one.

Configs are normalised before hashing (see :func:`normalise_config`): ``1`` and ``1.0``, numpy and
Python numbers, tuples and lists give the same key; ``True`` stays distinct from ``1``.

On disk, ``<root>/<kind>/<key>.safetensors`` holds the tensors and ``<key>.json`` the config, the
caller's metadata (e.g. test accuracy), library versions, the SHA-256 and size of the weights file
and an ``integrity`` digest: the SHA-256 of the canonical JSON (sorted keys, no whitespace) of every
other field of ``<key>.json``. Loading checks the structure of the metadata, the digest, the size
and the checksum of the weights: a truncated, edited or half-written file (weights *or* metadata,
e.g. a hand-edited ``test_acc``) raises :class:`CorruptArtifactError` and is never trusted. The
digest guards against accidents (edits, truncation, partial copies), not against someone who
recomputes it on purpose. Nothing is ever unpickled: safetensors stores raw tensors and JSON only.
Old-format metadata (without ``integrity``) counts as corrupt and is rebuilt. Writes go to a
temporary file first and are renamed into place, so an interrupted run never leaves a file that
looks complete. Builds take a per-key file lock
(``<root>/.locks/<kind>-<key>.lock``), so processes that share a cache (parallel study workers,
``mibench run-all -j``) build each artifact once: the others wait for it and load the result.

The cache folder defaults to :func:`default_cache_dir`: ``$MIBENCH_CACHE`` when set (read at call
time), else ``.mibench-cache``.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

#: Cache folder used when ``$MIBENCH_CACHE`` is unset or empty.
FALLBACK_CACHE_DIR = ".mibench-cache"

#: Kept for compatibility only: ``$MIBENCH_CACHE`` as it was when this module was *imported*.
#: Use :func:`default_cache_dir`, which reads the variable at call time.
DEFAULT_CACHE_DIR = Path(os.environ.get("MIBENCH_CACHE") or FALLBACK_CACHE_DIR)

#: Metadata fields every ``<key>.json`` must hold, with their JSON types.
_REQUIRED_FIELDS: dict[str, type] = {
    "key": str,
    "kind": str,
    "recipe": str,
    "config": dict,
    "metadata": dict,
    "sha256": str,
    "size": int,
    "integrity": str,
}


def default_cache_dir() -> Path:
    """The default cache folder: ``$MIBENCH_CACHE`` if set and non-empty, else ``.mibench-cache``.

    The environment is read at each call, so setting the variable after import takes effect.

    Example:
        >>> isinstance(default_cache_dir(), Path)
        True
    """
    return Path(os.environ.get("MIBENCH_CACHE") or FALLBACK_CACHE_DIR)


class CorruptArtifactError(RuntimeError):
    """A cached artifact failed its integrity check (checksum, size, format or metadata)."""


def normalise_config(value: Any) -> Any:
    """A JSON-ready copy of ``value`` in which equal numbers and equal sequences are spelled alike.

    Applied recursively: whole floats become ints (``1.0 -> 1``, ``-0.0 -> 0``); numpy and other
    :mod:`numbers` scalars become Python ``int``/``float``; booleans (also numpy's) stay booleans,
    distinct from 0 and 1; tuples, lists and arrays (numpy, torch) become lists; sets become lists
    sorted by their canonical JSON; mapping keys become strings (as JSON would write them). NaN
    and infinities stay floats. Anything else (paths, enums, ...) becomes ``str(value)``.

    Example:
        >>> normalise_config({"lr": 1.0, "sizes": (64, 128.0), "flag": True, "n": {"k": 2.5}})
        {'lr': 1, 'sizes': [64, 128], 'flag': True, 'n': {'k': 2.5}}
    """
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        x = float(value)
        return int(x) if math.isfinite(x) and x.is_integer() else x
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            nk = normalise_config(k)
            name = nk if isinstance(nk, str) else json.dumps(nk, sort_keys=True)
            if name in out:
                raise ValueError(
                    f"config keys {k!r} and another key both normalise to {name!r}; rename one"
                )
            out[name] = normalise_config(v)
        return out
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return normalise_config(value.tolist())
    if isinstance(value, (list, tuple)):
        return [normalise_config(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [normalise_config(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return str(value)


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_key(kind: str, config: Mapping[str, Any], *, recipe: str) -> str:
    """Stable 20-hex-digit key of (kind, recipe, config).

    The config is normalised first (:func:`normalise_config`), so key order, int/float spelling
    (``1`` vs ``1.0``), numpy vs Python scalars and tuple vs list do not matter; ``True`` and
    ``1`` differ.

    Example:
        >>> config_key("target", {"b": 1, "a": 2}, recipe="v1") == config_key("target", {"a": 2, "b": 1}, recipe="v1")
        True
        >>> config_key("target", {"lr": 1}, recipe="v1") == config_key("target", {"lr": 1.0}, recipe="v1")
        True
        >>> config_key("target", {"x": True}, recipe="v1") == config_key("target", {"x": 1}, recipe="v1")
        False
    """
    blob = _canonical_json(
        {"kind": kind, "recipe": recipe, "config": normalise_config(dict(config))}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tensor_fingerprint(*tensors: Tensor) -> str:
    """SHA-256 (16 hex digits) of the bytes, dtypes and shapes of tensors: a data identity for keys."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        t = t.reshape(-1)  # a 0-d tensor (e.g. BatchNorm's num_batches_tracked) cannot be viewed
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _metadata_digest(info: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every metadata field except ``integrity`` itself."""
    body = {k: v for k, v in info.items() if k != "integrity"}
    return hashlib.sha256(_canonical_json(body).encode()).hexdigest()


def _check_structure(meta: Any, mpath: Path) -> dict[str, Any]:
    """``meta`` if it is a dict with every required field of the right type, else raise."""
    if not isinstance(meta, dict):
        raise CorruptArtifactError(
            f"{mpath}: metadata must be a JSON object, got a JSON {type(meta).__name__}"
        )
    for name, typ in _REQUIRED_FIELDS.items():
        if name not in meta:
            raise CorruptArtifactError(f"{mpath}: metadata has no {name!r} field")
        value = meta[name]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise CorruptArtifactError(
                f"{mpath}: metadata field {name!r} must be a JSON {typ.__name__}, "
                f"got {type(value).__name__}"
            )
    return meta


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactCache:
    """A folder of hashed, checksummed artifacts.

    Args:
        root: Cache folder (created on first save); None or ``""`` means :func:`default_cache_dir`
            (``$MIBENCH_CACHE``, read when the cache is created, else ``.mibench-cache``).

    Example:
        >>> import tempfile
        >>> cache = ArtifactCache(tempfile.mkdtemp())
        >>> t, meta, hit = cache.get_or_build("demo", {"n": 2}, lambda: ({"w": torch.ones(2)}, {"acc": 1.0}))
        >>> hit, cache.get_or_build("demo", {"n": 2}, lambda: ({"w": torch.zeros(2)}, {}))[2]
        (False, True)
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, recipe: str = "1") -> None:
        if root is None or os.fspath(root) == "":
            root = default_cache_dir()
        self.root = Path(root)
        self.recipe = recipe

    def key(self, kind: str, config: Mapping[str, Any]) -> str:
        """The key ``config`` is stored under."""
        return config_key(kind, config, recipe=self.recipe)

    def paths(self, kind: str, config: Mapping[str, Any]) -> tuple[Path, Path]:
        """(weights file, metadata file) for ``config``."""
        base = self.root / kind / self.key(kind, config)
        return base.with_suffix(".safetensors"), base.with_suffix(".json")

    def exists(self, kind: str, config: Mapping[str, Any]) -> bool:
        """True when both files exist (their integrity is checked only on load)."""
        return all(p.exists() for p in self.paths(kind, config))

    def load(
        self, kind: str, config: Mapping[str, Any]
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Load and verify an artifact.

        Raises:
            FileNotFoundError: not cached.
            CorruptArtifactError: unreadable or structurally wrong metadata (not a JSON object, a
                missing or mistyped field), metadata whose ``integrity`` digest does not match its
                content (an edited field), a config or key mismatch, a wrong size or checksum, or
                a weights file safetensors cannot parse.
        """
        wpath, mpath = self.paths(kind, config)
        if not (wpath.exists() and mpath.exists()):
            raise FileNotFoundError(f"no cached {kind} artifact at {wpath}")
        try:
            meta = _check_structure(json.loads(mpath.read_text(encoding="utf-8")), mpath)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptArtifactError(f"{mpath}: unreadable metadata ({err})") from err
        digest = _metadata_digest(meta)
        if digest != meta["integrity"]:
            raise CorruptArtifactError(
                f"{mpath}: metadata digest {digest[:12]}... does not match the stored "
                f"{meta['integrity'][:12]}... (the file was edited or damaged)"
            )
        if meta["key"] != self.key(kind, config):
            raise CorruptArtifactError(
                f"{mpath}: metadata belongs to key {meta['key']!r}, not this config"
            )
        size = wpath.stat().st_size
        if size != meta["size"]:
            raise CorruptArtifactError(
                f"{wpath}: size {size} bytes, expected {meta['size']} (truncated?)"
            )
        digest = _sha256_file(wpath)
        if digest != meta["sha256"]:
            raise CorruptArtifactError(
                f"{wpath}: SHA-256 {digest[:12]}... does not match {meta['sha256'][:12]}..."
            )
        try:
            tensors = load_file(str(wpath))
        except (SafetensorError, OSError, ValueError) as err:
            raise CorruptArtifactError(f"{wpath}: not a readable safetensors file ({err})") from err
        return tensors, meta["metadata"]

    def save(
        self,
        kind: str,
        config: Mapping[str, Any],
        tensors: Mapping[str, Tensor],
        metadata: Mapping[str, Any],
    ) -> Path:
        """Write an artifact atomically (temporary file, then rename); returns the weights path.

        ``metadata`` must be JSON-serialisable (other values are stored as their ``str``); the
        config is stored normalised (:func:`normalise_config`).
        """
        wpath, mpath = self.paths(kind, config)
        wpath.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        fd, tmp = tempfile.mkstemp(dir=wpath.parent, suffix=".tmp")
        os.close(fd)
        save_file(clean, tmp, metadata={"key": self.key(kind, config), "kind": kind})
        info = {
            "key": self.key(kind, config),
            "kind": kind,
            "recipe": self.recipe,
            "config": normalise_config(dict(config)),
            "metadata": dict(metadata),
            "sha256": _sha256_file(Path(tmp)),
            "size": Path(tmp).stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
        }
        # Round-trip through JSON first, so the digest covers exactly what load() will read.
        info = json.loads(json.dumps(info, default=str))
        info["integrity"] = _metadata_digest(info)
        mtmp = mpath.with_suffix(".json.tmp")
        mtmp.write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, wpath)
        os.replace(mtmp, mpath)
        return wpath

    def get_or_build(
        self,
        kind: str,
        config: Mapping[str, Any],
        build: Callable[[], tuple[Mapping[str, Tensor], Mapping[str, Any]]],
    ) -> tuple[dict[str, Tensor], dict[str, Any], bool]:
        """Load the artifact for ``config``, or build, save and return it.

        A corrupt artifact is reported with a warning, moved aside to ``*.corrupt`` (kept for
        inspection) and rebuilt.

        Returns:
            ``(tensors, metadata, hit)`` where ``hit`` says whether the cache was used.
        """
        loaded = self._load_trusted(kind, config)
        if loaded is not None:
            return (*loaded, True)
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(str(locks / f"{kind}-{self.key(kind, config)}.lock")):
            loaded = self._load_trusted(kind, config)  # another process may have built it meanwhile
            if loaded is not None:
                return (*loaded, True)
            tensors, meta = build()
            self.save(kind, config, tensors, meta)
        return {k: v.detach().cpu() for k, v in tensors.items()}, dict(meta), False

    def _load_trusted(
        self, kind: str, config: Mapping[str, Any]
    ) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """The artifact if it is cached and intact; a corrupt one is moved aside and None returned."""
        if not self.exists(kind, config):
            return None
        try:
            return self.load(kind, config)
        except CorruptArtifactError as err:
            warnings.warn(
                f"ignoring corrupt cached {kind}: {err}; rebuilding", RuntimeWarning, stacklevel=3
            )
            for p in self.paths(kind, config):
                if p.exists():
                    os.replace(p, p.with_name(p.name + ".corrupt"))
            return None


def prefixed(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``{prefix + '.' + k: v}``: several state dicts in one artifact."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Inverse of :func:`prefixed` for one prefix."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}
