"""Content-addressed cache of trained artifacts (targets, evaluators, generators).

An artifact is identified by a hash of everything that determines it: a JSON-serialisable
``config`` (data fingerprint, split, architecture, seed, hyperparameters) plus the ``kind`` and a
``recipe`` version that is bumped whenever the training code changes meaning. A rerun with the same
config loads the artifact; any changed field trains a new one.

On disk, ``<root>/<kind>/<key>.safetensors`` holds the tensors and ``<key>.json`` the config, the
caller's metadata (e.g. test accuracy), library versions and the SHA-256 and size of the weights
file. Loading recomputes the checksum: a truncated, edited or half-written file raises
:class:`CorruptArtifactError` and is never trusted. Nothing is ever unpickled: safetensors stores raw
tensors and JSON only. Writes go to a temporary file first and are renamed into place, so an
interrupted run never leaves a file that looks complete. Builds take a per-key file lock
(``<root>/.locks/<kind>-<key>.lock``), so processes that share a cache (parallel study workers, ``mibench run-all -j``)
build each artifact once: the others wait for it and load the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

DEFAULT_CACHE_DIR = Path(os.environ.get("MIBENCH_CACHE", ".mibench-cache"))


class CorruptArtifactError(RuntimeError):
    """A cached artifact failed its integrity check (checksum, size, format or metadata)."""


def config_key(kind: str, config: Mapping[str, Any], *, recipe: str) -> str:
    """Stable 20-hex-digit key of (kind, recipe, config); key order and int/float spelling matter not.

    Example:
        >>> config_key("target", {"b": 1, "a": 2}, recipe="v1") == config_key("target", {"a": 2, "b": 1}, recipe="v1")
        True
    """
    blob = json.dumps(
        {"kind": kind, "recipe": recipe, "config": config}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tensor_fingerprint(*tensors: Tensor) -> str:
    """SHA-256 (16 hex digits) of the bytes, dtypes and shapes of tensors: a data identity for keys."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactCache:
    """A folder of hashed, checksummed artifacts.

    Args:
        root: Cache folder (created on first save).

    Example:
        >>> import tempfile
        >>> cache = ArtifactCache(tempfile.mkdtemp())
        >>> t, meta, hit = cache.get_or_build("demo", {"n": 2}, lambda: ({"w": torch.ones(2)}, {"acc": 1.0}))
        >>> hit, cache.get_or_build("demo", {"n": 2}, lambda: ({"w": torch.zeros(2)}, {}))[2]
        (False, True)
    """

    def __init__(self, root: str | Path = DEFAULT_CACHE_DIR, *, recipe: str = "1") -> None:
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
            CorruptArtifactError: unreadable metadata, a config or key mismatch, a wrong size or
                checksum, or a weights file safetensors cannot parse.
        """
        wpath, mpath = self.paths(kind, config)
        if not (wpath.exists() and mpath.exists()):
            raise FileNotFoundError(f"no cached {kind} artifact at {wpath}")
        try:
            meta = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptArtifactError(f"{mpath}: unreadable metadata ({err})") from err
        if meta.get("key") != self.key(kind, config):
            raise CorruptArtifactError(
                f"{mpath}: metadata belongs to key {meta.get('key')!r}, not this config"
            )
        size = wpath.stat().st_size
        if size != meta.get("size"):
            raise CorruptArtifactError(
                f"{wpath}: size {size} bytes, expected {meta.get('size')} (truncated?)"
            )
        digest = _sha256_file(wpath)
        if digest != meta.get("sha256"):
            raise CorruptArtifactError(
                f"{wpath}: SHA-256 {digest[:12]}... does not match {str(meta.get('sha256'))[:12]}..."
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
        """Write an artifact atomically (temporary file, then rename); returns the weights path."""
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
            "config": config,
            "metadata": dict(metadata),
            "sha256": _sha256_file(Path(tmp)),
            "size": Path(tmp).stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
        }
        mtmp = mpath.with_suffix(".json.tmp")
        mtmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
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
