import json

import pytest
import torch

from mibench_lib.cache import ArtifactCache, CorruptArtifactError, config_key, tensor_fingerprint


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
