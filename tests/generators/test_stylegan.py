"""StyleGenerator (StyleGAN2-ADA architecture), its public-data training and the pickle converter."""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mibench_lib.attacks._style_prior import STYLE_GENERATOR
from mibench_lib.data import ImageSet
from mibench_lib.generators.stylegan import (
    StyleGenerator,
    SynthesisLayer,
    _upfirdn,
    build_style_generator,
    load_style_generator,
    load_stylegan2_ada,
)
from mibench_lib.testing import build_public_prior, tiny_digits, tiny_style_generator

ROOT = Path(__file__).resolve().parents[2]


def _converter():
    spec = importlib.util.spec_from_file_location(
        "convert_stylegan2_ada", ROOT / "scripts" / "convert_stylegan2_ada.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    x, y = tiny_digits()
    return x[:256], y[:256]


@pytest.fixture(scope="module")
def quick_build(digits):
    x, _ = digits
    return build_style_generator(
        ImageSet(x, torch.full((len(x),), -1)), seed=0, **STYLE_GENERATOR.quick
    )


# ------------------------------------------------------------------------------ architecture


@pytest.mark.parametrize(("resolution", "num_ws"), [(8, 4), (16, 6), (32, 8)])
def test_shapes_num_ws_and_range(resolution, num_ws):
    g = tiny_style_generator(resolution=resolution, channels=3)
    z = torch.randn(5, g.z_dim)
    with torch.no_grad():
        x = g(z)
        ws = g.broadcast(g.mapping(z))
    assert g.num_ws == num_ws == 2 * int(np.log2(resolution)) - 2
    assert g.latent_dim == g.z_dim and g.output_shape == (3, resolution, resolution)
    assert ws.shape == (5, num_ws, g.w_dim) and g.w_avg.shape == (g.w_dim,)
    assert x.shape == (5, 3, resolution, resolution)
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0
    assert g.num_blocks == int(np.log2(resolution)) - 1


def test_mapping_ends_in_lrelu_02_and_p_space_round_trip():
    g = tiny_style_generator()
    z = torch.randn(64, g.z_dim)
    with torch.no_grad():
        w = g.mapping(z)
        a = g.mapping_network.pre_activation(z)
    p = nn.LeakyReLU(1 / g.mapping_slope)(w)
    assert g.mapping_slope == 0.2
    torch.testing.assert_close(p, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nn.LeakyReLU(0.2)(p), w, rtol=1e-5, atol=1e-6)
    assert (a < 0).float().mean() > 0.2  # the negative branch is exercised


def test_truncation():
    g = tiny_style_generator()
    g.w_avg.copy_(torch.randn(g.w_dim))
    z = torch.randn(4, g.z_dim)
    with torch.no_grad():
        w1 = g.mapping(z)
        torch.testing.assert_close(g.mapping(z, truncation_psi=1.0), w1)
        torch.testing.assert_close(g.mapping(z, truncation_psi=0.0), g.w_avg.expand(4, -1))
        torch.testing.assert_close(g.mapping(z, 0.5), (w1 + g.w_avg) / 2)


def test_eval_is_deterministic_and_training_noise_random():
    g = tiny_style_generator()
    for m in g.modules():
        if isinstance(m, SynthesisLayer):
            m.noise_strength.data.fill_(0.5)
    z = torch.randn(3, g.z_dim)
    with torch.no_grad():
        assert torch.equal(g(z), g(z))
        g.train()
        a, b = g(z), g(z)
        g.eval()
    assert not torch.equal(a, b)


def test_w_avg_tracked_in_training_only():
    g = tiny_style_generator()
    z = torch.randn(16, g.z_dim)
    with torch.no_grad():
        g.mapping(z)
        assert torch.all(g.w_avg == 0)
        g.train()
        w = g.mapping(z)
    torch.testing.assert_close(g.w_avg, w.mean(0) * (1 - 0.995))


def test_synthesis_blocks_compose_to_full_synthesis():
    g = tiny_style_generator(resolution=16)
    ws = torch.randn(3, g.num_ws, g.w_dim)
    with torch.no_grad():
        full = g.synthesis(ws)
        for k in range(1, g.num_blocks):
            h = g.synthesis_blocks(ws, stop=k)
            assert h.shape[1] == g.synthesis_network.block(k - 1).out_channels + 1
            torch.testing.assert_close(g.synthesis_blocks(ws, start=k, features=h), full)
        w = torch.randn(3, g.w_dim)
        torch.testing.assert_close(g.synthesize_w(w), g.synthesis(g.broadcast(w)))
        torch.testing.assert_close(g.synthesize(w), g.synthesize_w(w))
    with pytest.raises(ValueError, match="features"):
        g.synthesis_blocks(ws, start=1)
    with pytest.raises(ValueError, match="ws"):
        g.synthesis(torch.randn(3, g.num_ws + 1, g.w_dim))


def test_demodulation_normalises_output():
    torch.manual_seed(0)
    layer = SynthesisLayer(64, 32, 8, 8)
    x = torch.randn(16, 64, 8, 8)
    w = torch.randn(16, 8)
    with torch.no_grad():
        rms = layer(x, w, "none").square().mean().sqrt()
        layer.weight.mul_(10)
        layer.affine.weight.mul_(3)
        rms_scaled = layer(x, w, "none").square().mean().sqrt()
    # unit-variance pre-activation -> lrelu(0.2) * sqrt(2) has rms sqrt(1.04) ~ 1.02
    assert 0.8 < rms < 1.25 and 0.8 < rms_scaled < 1.25


def test_upsampling_layer_matches_official_reference():
    """conv2d_resample(up=2): zero insertion, pad (3, 2), FIR x4, true (flipped) 3x3 conv."""
    torch.manual_seed(0)
    layer = SynthesisLayer(4, 5, 8, 16, up=2)
    x, w = torch.randn(3, 4, 8, 8), torch.randn(3, 8)
    with torch.no_grad():
        got = layer(x, w, "none")
        s = layer.affine(w)
        ref = _upfirdn(x * s[:, :, None, None], layer.resample_filter, up=2, pad=(3, 2), gain=4.0)
        ref = F.conv2d(ref, layer.weight.flip([2, 3]))
        d = (
            (layer.weight[None] * s[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8
        ).rsqrt()
        ref = (
            F.leaky_relu(ref * d[:, :, None, None] + layer.bias[None, :, None, None], 0.2) * 2**0.5
        )
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_official_state_dict_names():
    keys = set(tiny_style_generator(resolution=16).state_dict())
    for k in (
        "mapping.fc0.weight",
        "mapping.fc0.bias",
        "mapping.fc1.weight",
        "mapping.w_avg",
        "synthesis.b4.const",
        "synthesis.b4.resample_filter",
        "synthesis.b4.conv1.weight",
        "synthesis.b4.conv1.affine.weight",
        "synthesis.b4.conv1.affine.bias",
        "synthesis.b4.conv1.noise_const",
        "synthesis.b4.conv1.noise_strength",
        "synthesis.b4.torgb.weight",
        "synthesis.b8.conv0.weight",
        "synthesis.b8.conv0.resample_filter",
        "synthesis.b8.torgb.affine.weight",
        "synthesis.b16.conv1.bias",
        "synthesis.b16.torgb.bias",
    ):
        assert k in keys, k
    assert not any(k.startswith(("stem", "blocks")) for k in keys)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="resolution"):
        StyleGenerator(8, 8, 12, 1)
    with pytest.raises(ValueError, match="z_dim"):
        StyleGenerator(0, 8, 8, 1)


# ---------------------------------------------------------------------------------- training


def test_build_is_seeded_trains_and_round_trips(digits, quick_build):
    x, _ = digits
    tensors, meta = quick_build
    # the same build through the prior's cache round trip (tensors + JSON metadata)
    again = build_public_prior(STYLE_GENERATOR, x)
    assert again.state_dict().keys() == tensors.keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in tensors.items())
    other, _ = build_style_generator(
        ImageSet(x, torch.full((len(x),), -1)), seed=1, **{**STYLE_GENERATOR.quick, "iterations": 1}
    )
    assert not torch.equal(tensors["synthesis.b4.const"], other["synthesis.b4.const"])
    assert tensors["mapping.w_avg"].abs().sum() > 0  # w_avg tracked
    # D starts near chance (2 log 2) and learns (seed 0 measured: 1.47 -> 1.38)
    first, last = np.mean(meta["d_loss"][:3]), np.mean(meta["d_loss"][-5:])
    assert first == pytest.approx(2 * np.log(2), abs=0.2) and last < first - 0.03
    g = load_style_generator(tensors, json.loads(json.dumps(meta)), "cpu")
    assert not g.training and not again.training
    z = torch.randn(4, g.z_dim)
    with torch.no_grad():
        torch.testing.assert_close(g(z), again(z))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 10_000}, "batch_size"),
        ({"iterations": 0}, "iterations"),
        ({"lr": -1.0}, "lr"),
        ({"r1_gamma": -1.0}, "r1_gamma"),
        ({"betas": (0.0, 1.0)}, "betas"),
        ({"style_mixing": 2.0}, "style_mixing"),
        ({"channels": 0}, "channels"),
    ],
)
def test_build_bad_arguments(digits, kwargs, name):
    x, _ = digits
    public = ImageSet(x[:32], torch.full((32,), -1))
    with pytest.raises(ValueError, match=name):
        build_style_generator(public, seed=0, **{**STYLE_GENERATOR.quick, **kwargs})


def test_style_mixing_build_runs(digits):
    x, _ = digits
    tensors, meta = build_style_generator(
        ImageSet(x[:64], torch.full((64,), -1)),
        seed=0,
        **{**STYLE_GENERATOR.quick, "iterations": 3, "style_mixing": 0.9},
    )
    assert meta["style_mixing"] == 0.9 and all(torch.isfinite(v).all() for v in tensors.values())


# --------------------------------------------------------------------------------- converter


def _persistent_record(module: nn.Module, class_name: str, fake_reduce, init_kwargs=None):
    """A stand-in for a torch_utils.persistence object, pickled as reconstruct(meta)."""
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(module._parameters),
        "_buffers": collections.OrderedDict(module._buffers),
        "_non_persistent_buffers_set": set(),
        "_modules": collections.OrderedDict(
            (n, _persistent_record(c, type(c).__name__, fake_reduce))
            for n, c in module._modules.items()
        ),
        "weight_gain": np.float64(0.5),  # numpy scalars appear in the official __dict__s
        "_init_args": (),
        "_init_kwargs": init_kwargs or {},
    }
    meta = {
        "type": "class",
        "version": 6,
        "module_src": "import os\nos.system('echo never run')\n",
        "class_name": class_name,
        "state": state,
    }
    return _Record(fake_reduce, meta)


class _Record:
    def __init__(self, fn, meta):
        self.fn, self.meta = fn, meta

    def __reduce__(self):
        return (self.fn, (self.meta,))


@pytest.fixture
def fake_official_modules(monkeypatch):
    """Fake ``torch_utils.persistence`` and ``dnnlib.util`` so pickle can name their globals."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called on load
        raise AssertionError("the converter must not call the official reconstruct")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    for name, mod in (
        ("torch_utils", types.ModuleType("torch_utils")),
        ("torch_utils.persistence", persistence),
        ("dnnlib", types.ModuleType("dnnlib")),
        ("dnnlib.util", util),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    return _reconstruct_persistent_obj, EasyDict


def test_converter_reads_synthetic_official_pickle(tmp_path, fake_official_modules):
    reconstruct, EasyDict = fake_official_modules
    g = tiny_style_generator(resolution=16, channels=3, seed=3)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, SynthesisLayer):
                m.noise_strength.fill_(0.3)
        g.w_avg.copy_(torch.randn(g.w_dim))
    init = {
        "z_dim": g.z_dim,
        "c_dim": 0,
        "w_dim": g.w_dim,
        "img_resolution": 16,
        "img_channels": 3,
        "mapping_kwargs": EasyDict(num_layers=2),
        "synthesis_kwargs": EasyDict(channel_base=128, channel_max=16, conv_clamp=None),
    }
    record = _persistent_record(g, "Generator", reconstruct, init)
    pkl = tmp_path / "network-snapshot.pkl"
    with open(pkl, "wb") as fh:
        pickle.dump(
            {"G": record, "D": None, "G_ema": record, "training_set_kwargs": EasyDict(a=1)}, fh
        )
    conv = _converter()
    st, js = conv.convert(pkl, tmp_path / "out" / "g_ema")
    info = json.loads(js.read_text())
    assert info["channel_base"] == 128 and info["channel_max"] == 16
    assert info["mapping_layers"] == 2 and info["img_channels"] == 3 and info["c_dim"] == 0
    loaded = load_stylegan2_ada(st, js)
    z = torch.randn(4, g.z_dim)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, 0.7), g(z, 0.7))
    # without init kwargs the sizes are inferred from the tensors
    captured = conv.restricted_load(pkl)["G_ema"]
    captured.meta["state"]["_init_kwargs"] = {}
    _, hp = conv.extract_generator({"G_ema": captured})
    assert {k: hp[k] for k in ("channel_base", "channel_max", "mapping_layers")} == {
        "channel_base": 128,
        "channel_max": 16,
        "mapping_layers": 2,
    }


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_converter_refuses_malicious_pickles(tmp_path, fake_official_modules):
    conv = _converter()
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": _Evil(marker)}))
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt|os)\.system"):
        conv.restricted_load(bad)
    # hidden inside a persistence record's state
    reconstruct, _ = fake_official_modules
    rec = _persistent_record(nn.Linear(2, 2), "Generator", reconstruct)
    rec.meta["state"]["payload"] = _Evil(marker)
    bad.write_bytes(pickle.dumps({"G_ema": rec}))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        conv.restricted_load(bad)
    bad.write_bytes(pickle.dumps(collections.Counter("ab")))
    with pytest.raises(pickle.UnpicklingError, match=r"collections\.Counter"):
        conv.restricted_load(bad)
    assert not marker.exists()


def test_load_stylegan2_ada_is_strict(tmp_path):
    from safetensors.torch import save_file

    g = tiny_style_generator()
    hp = {**g.hparams, "c_dim": 0}
    state = {k: v.clone() for k, v in g.state_dict().items()}
    (tmp_path / "g.json").write_text(json.dumps(hp))
    save_file(state, str(tmp_path / "g.safetensors"))
    loaded = load_stylegan2_ada(tmp_path / "g.safetensors", tmp_path / "g.json")
    z = torch.randn(2, g.z_dim)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), g(z))
    del state["synthesis.b8.torgb.bias"]
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RuntimeError, match=r"torgb\.bias"):
        load_stylegan2_ada(tmp_path / "bad.safetensors", tmp_path / "g.json")
    (tmp_path / "c.json").write_text(json.dumps({**hp, "c_dim": 10}))
    with pytest.raises(ValueError, match="c_dim"):
        load_stylegan2_ada(tmp_path / "g.safetensors", tmp_path / "c.json")


def test_the_style_prior_loads_converted_weights_instead_of_training(tmp_path):
    import json

    from safetensors.torch import save_file

    from mibench_lib.data import ImageSet
    from mibench_lib.generators.stylegan import build_style_generator, load_style_generator
    from mibench_lib.testing import tiny_style_generator

    g = tiny_style_generator()
    save_file({k: v.contiguous() for k, v in g.state_dict().items()}, tmp_path / "g.safetensors")
    (tmp_path / "g.json").write_text(json.dumps(g.hparams))
    public = ImageSet(torch.rand(16, *g.output_shape), torch.full((16,), -1))
    tensors, meta = build_style_generator(public, seed=0, weights=str(tmp_path / "g"))
    loaded = load_style_generator(tensors, json.loads(json.dumps(meta)))
    z = torch.randn(3, g.z_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(z), g(z))
    wrong = ImageSet(torch.rand(4, 1, 16, 16), torch.full((4,), -1))
    with pytest.raises(ValueError, match="public images"):
        build_style_generator(wrong, seed=0, weights=str(tmp_path / "g"))
