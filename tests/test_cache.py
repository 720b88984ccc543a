import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mibench_lib.cache import (
    ArtifactCache,
    CorruptArtifactError,
    config_key,
    default_cache_dir,
    tensor_fingerprint,
)


def _build(value: float = 1.0):
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.full((3, 4), value), "n": torch.tensor([7])}, {"acc": 0.5}

    return build, calls


def test_rerun_reuses_and_changed_config_rebuilds(tmp_path):
    cache = ArtifactCache(tmp_path)
    build, calls = _build()
    t1, _, hit1 = cache.get_or_build("target", {"lr": 0.1, "seed": 0}, build)
    t2, m2, hit2 = cache.get_or_build(
        "target", {"seed": 0, "lr": 0.1}, build
    )  # key order irrelevant
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    torch.testing.assert_close(t1["w"], t2["w"])
    assert m2 == {"acc": 0.5}
    cache.get_or_build("target", {"lr": 0.2, "seed": 0}, build)
    assert len(calls) == 2


def test_recipe_version_changes_key():
    assert config_key("t", {"a": 1}, recipe="1") != config_key("t", {"a": 1}, recipe="2")


@pytest.mark.parametrize("damage", ["truncate", "flip", "metadata", "foreign"])
def test_corruption_is_detected_never_trusted(tmp_path, damage):
    cache = ArtifactCache(tmp_path)
    build, calls = _build()
    cfg = {"seed": 0}
    cache.get_or_build("gan", cfg, build)
    wpath, mpath = cache.paths("gan", cfg)
    if damage == "truncate":
        wpath.write_bytes(wpath.read_bytes()[:-10])
    elif damage == "flip":
        raw = bytearray(wpath.read_bytes())
        raw[-3] ^= 0xFF
        wpath.write_bytes(bytes(raw))
    elif damage == "metadata":
        mpath.write_text("{not json")
    else:
        meta = json.loads(mpath.read_text())
        meta["key"] = "someone-else"
        mpath.write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError):
        cache.load("gan", cfg)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        tensors, _, hit = cache.get_or_build("gan", cfg, build)
    assert not hit and len(calls) == 2
    torch.testing.assert_close(tensors["w"], torch.ones(3, 4))
    assert wpath.with_name(wpath.name + ".corrupt").exists()
    assert cache.load("gan", cfg)[1] == {"acc": 0.5}


def test_no_pickle_on_disk(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.get_or_build("x", {"a": 1}, _build()[0])
    wpath, _ = cache.paths("x", {"a": 1})
    header_len = int.from_bytes(wpath.read_bytes()[:8], "little")
    header = json.loads(
        wpath.read_bytes()[8 : 8 + header_len]
    )  # safetensors: JSON header + raw bytes
    assert set(header) == {"w", "n", "__metadata__"}


def test_missing_artifact_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        ArtifactCache(tmp_path).load("target", {"a": 1})


def test_tensor_fingerprint_sees_values_and_shapes():
    a = torch.zeros(4)
    assert tensor_fingerprint(a) == tensor_fingerprint(torch.zeros(4))
    assert tensor_fingerprint(a) != tensor_fingerprint(torch.zeros(2, 2))
    b = a.clone()
    b[1] = 1e-7
    assert tensor_fingerprint(a) != tensor_fingerprint(b)


def _slow_build_in_process(root: str, log: str) -> bool:
    """Runs in a separate process: build one artifact slowly, logging each real build."""
    import time

    def build():
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        return {"w": torch.ones(2)}, {}

    return ArtifactCache(root).get_or_build("gan", {"seed": 0}, build)[2]


def test_concurrent_processes_build_an_artifact_once(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log = tmp_path / "builds.log"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        hits = list(pool.map(_slow_build_in_process, [str(tmp_path)] * 2, [str(log)] * 2))
    assert log.read_text().count("built") == 1  # the second process waited and loaded it
    assert sorted(hits) == [False, True]


# -- key normalisation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"lr": 1}, {"lr": 1.0}),
        ({"lr": -0.0}, {"lr": 0}),
        ({"opt": {"lr": 1, "betas": (0.5, 0.999)}}, {"opt": {"lr": 1.0, "betas": [0.5, 0.999]}}),
        (
            {"layers": [{"width": 64}, {"width": 128.0}]},
            {"layers": [{"width": 64.0}, {"width": 128}]},
        ),
        ({"n": np.int64(3), "p": np.float64(0.25)}, {"n": 3, "p": 0.25}),
        ({"n": np.float32(2.0), "flag": np.bool_(True)}, {"n": 2, "flag": True}),
        ({"shape": np.array([8, 8])}, {"shape": (8, 8)}),
        ({"ids": {3, 1, 2}}, {"ids": [1, 2, 3]}),
        ({1: "a"}, {"1": "a"}),
    ],
)
def test_equal_numbers_and_sequences_share_a_key(a, b):
    assert config_key("target", a, recipe="1") == config_key("target", b, recipe="1")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"x": True}, {"x": 1}),
        ({"x": False}, {"x": 0}),
        ({"x": {"y": True}}, {"x": {"y": 1.0}}),
        ({"x": [np.bool_(False)]}, {"x": [0]}),
        ({"lr": 1}, {"lr": 1.5}),
        ({"lr": 0.1}, {"lr": "0.1"}),
        ({"x": None}, {"x": 0}),
        ({"x": [1, 2]}, {"x": [2, 1]}),
    ],
)
def test_different_values_get_different_keys(a, b):
    assert config_key("target", a, recipe="1") != config_key("target", b, recipe="1")


def test_int_and_float_spelling_hit_the_same_artifact(tmp_path):
    cache = ArtifactCache(tmp_path)
    build, calls = _build()
    assert not cache.get_or_build("target", {"opt": {"lr": 1, "epochs": 10}}, build)[2]
    assert cache.get_or_build("target", {"opt": {"lr": 1.0, "epochs": np.int32(10)}}, build)[2]
    assert len(calls) == 1


# -- metadata integrity ---------------------------------------------------------------------------
def _edit_json(mpath, edit):
    meta = json.loads(mpath.read_text())
    mpath.write_text(json.dumps(edit(meta)))


def _set(meta, path, value):
    d = meta
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return meta


DAMAGE = {
    "json list": lambda w, m: m.write_text("[1, 2, 3]"),
    "json string": lambda w, m: m.write_text('"hello"'),
    "json null": lambda w, m: m.write_text("null"),
    "empty file": lambda w, m: m.write_text(""),
    "no metadata field": lambda w, m: _edit_json(
        m, lambda d: {k: v for k, v in d.items() if k != "metadata"}
    ),
    "no integrity field (old format)": lambda w, m: _edit_json(
        m, lambda d: {k: v for k, v in d.items() if k != "integrity"}
    ),
    "metadata is a list": lambda w, m: _edit_json(m, lambda d: _set(d, ["metadata"], [0.5])),
    "size is a string": lambda w, m: _edit_json(m, lambda d: _set(d, ["size"], str(d["size"]))),
    "size is a bool": lambda w, m: _edit_json(m, lambda d: _set(d, ["size"], True)),
    "sha256 is null": lambda w, m: _edit_json(m, lambda d: _set(d, ["sha256"], None)),
    "edited test_acc": lambda w, m: _edit_json(
        m, lambda d: _set(d, ["metadata", "test_acc"], 0.99)
    ),
    "edited config": lambda w, m: _edit_json(m, lambda d: _set(d, ["config", "epochs"], 1)),
    "added field": lambda w, m: _edit_json(m, lambda d: _set(d, ["note"], "trust me")),
    "truncated weights": lambda w, m: w.write_bytes(w.read_bytes()[:-10]),
    "overwritten weight bytes": lambda w, m: w.write_bytes(w.read_bytes()[:-4] + bytes(4)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_malformed_or_edited_metadata_is_rebuilt(tmp_path, damage):
    cache = ArtifactCache(tmp_path)
    cfg = {"seed": 0, "epochs": 30}
    builds = iter([1.0, 2.0])

    def build():
        v = next(builds)
        return {"w": torch.full((3, 4), v)}, {"test_acc": 0.25 * v}

    cache.get_or_build("target", cfg, build)
    wpath, mpath = cache.paths("target", cfg)
    DAMAGE[damage](wpath, mpath)
    with pytest.raises(CorruptArtifactError):
        cache.load("target", cfg)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        tensors, meta, hit = cache.get_or_build("target", cfg, build)
    assert not hit
    torch.testing.assert_close(tensors["w"], torch.full((3, 4), 2.0))  # the fresh build
    assert meta == {"test_acc": 0.5}
    assert mpath.with_name(mpath.name + ".corrupt").exists()
    assert wpath.with_name(wpath.name + ".corrupt").exists()
    reloaded, meta2 = cache.load("target", cfg)  # the rebuilt artifact is intact
    torch.testing.assert_close(reloaded["w"], torch.full((3, 4), 2.0))
    assert meta2 == {"test_acc": 0.5}


def test_metadata_round_trips_and_config_is_stored_normalised(tmp_path):
    cache = ArtifactCache(tmp_path)
    cfg = {"lr": 1.0, "sizes": (8, 16), "seed": np.int64(0)}
    cache.save("target", cfg, {"w": torch.zeros(2)}, {"acc": 0.125, "nan": float("nan")})
    stored = json.loads(cache.paths("target", cfg)[1].read_text())
    assert stored["config"] == {"lr": 1, "sizes": [8, 16], "seed": 0}
    _, meta = cache.load("target", cfg)
    assert meta["acc"] == 0.125 and meta["nan"] != meta["nan"]


# -- default folder -------------------------------------------------------------------------------
def test_default_cache_dir_reads_the_environment_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("MIBENCH_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    for root in (None, ""):
        assert ArtifactCache(root).root == tmp_path / "a"
    assert ArtifactCache().root == tmp_path / "a"
    monkeypatch.setenv("MIBENCH_CACHE", str(tmp_path / "b"))
    assert ArtifactCache("").root == tmp_path / "b"
    assert ArtifactCache(tmp_path / "c").root == tmp_path / "c"
    monkeypatch.setenv("MIBENCH_CACHE", "")
    assert default_cache_dir() == Path(".mibench-cache")
    monkeypatch.delenv("MIBENCH_CACHE")
    assert ArtifactCache().root == Path(".mibench-cache")


def test_default_cache_is_used_for_builds(monkeypatch, tmp_path):
    monkeypatch.setenv("MIBENCH_CACHE", str(tmp_path / "env-cache"))
    ArtifactCache("").get_or_build("x", {"a": 1}, _build()[0])
    assert len(list((tmp_path / "env-cache" / "x").glob("*.safetensors"))) == 1
