import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from mibench_lib import artifacts
from mibench_lib.artifacts import (
    cached_classifier,
    cached_defended_target,
    cached_gan,
    cached_target_checkpoints,
    load_face_extractor,
    make_defense,
    public_labelled,
)
from mibench_lib.cache import ArtifactCache, tensor_fingerprint
from mibench_lib.data import load_dataset
from mibench_lib.defenses import DEFENSES, STUDY_INPUTS, Defense
from mibench_lib.models.train import accuracy

PARAMETERS = Path(__file__).resolve().parents[1] / "parameters"


@pytest.fixture(scope="module")
def split():
    return load_dataset("digits", resolution=16)


TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.002, "eval_every": 2}


def test_target_checkpoints_cached_and_reused(tmp_path, split):
    cache = ArtifactCache(tmp_path)
    a = cached_target_checkpoints(
        cache,
        split,
        arch="mnist_cnn",
        train_cfg=TRAIN,
        thresholds=[0.5, 0.7],  # best accuracy 0.95-0.98 over seeds 0-4
        seed=0,
        progress=False,
    )
    files = sorted(tmp_path.rglob("*.safetensors"))
    b = cached_target_checkpoints(
        cache,
        split,
        arch="mnist_cnn",
        train_cfg=TRAIN,
        thresholds=[0.7, 0.5],
        seed=0,
        progress=False,
    )
    assert sorted(tmp_path.rglob("*.safetensors")) == files and len(files) == 1
    assert [c.threshold for c in a] == [0.5, 0.7]
    for ca, cb in zip(a, b):
        assert ca.test_acc == cb.test_acc >= ca.threshold
        assert accuracy(cb.model, split.private_test) == pytest.approx(cb.test_acc)
        for x, y in zip(ca.model.state_dict().values(), cb.model.state_dict().values()):
            assert torch.equal(x, y)
    cached_target_checkpoints(
        cache,
        split,
        arch="mnist_cnn",
        train_cfg=TRAIN,
        thresholds=[0.5, 0.7],
        seed=1,
        progress=False,
    )
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2  # another seed is another artifact


def test_unreachable_thresholds_raise(tmp_path, split):
    with pytest.raises(RuntimeError, match="reached none of the thresholds"):
        cached_target_checkpoints(
            ArtifactCache(tmp_path),
            split,
            arch="mnist_cnn",
            train_cfg={"epochs": 1, "lr": 1e-9},
            thresholds=[1.0],
            seed=0,
            progress=False,
        )


def test_unknown_training_key_is_named(tmp_path, split):
    with pytest.raises(ValueError, match="epochz"):
        cached_classifier(
            ArtifactCache(tmp_path),
            role="evaluator",
            arch="mnist_eval",
            train=split.evaluator_train,
            test=split.evaluator_test,
            num_classes=10,
            train_cfg={"epochz": 1},
            seed=0,
        )
    with pytest.raises(ValueError, match="unknown model architecture 'vgg'"):
        cached_classifier(
            ArtifactCache(tmp_path),
            role="evaluator",
            arch="vgg",
            train=split.evaluator_train,
            test=split.evaluator_test,
            num_classes=10,
            train_cfg={},
            seed=0,
        )


def test_gan_and_face_extractor(tmp_path, split):
    cache = ArtifactCache(tmp_path)
    gan = cached_gan(
        cache,
        split.public,
        latent_dim=8,
        width=8,
        critic_width=8,
        train_cfg={"epochs": 1},
        progress=False,
    )
    again = cached_gan(
        cache,
        split.public,
        latent_dim=8,
        width=8,
        critic_width=8,
        train_cfg={"epochs": 1},
        progress=False,
    )
    assert not gan.cache_hit and again.cache_hit
    assert not any(p.requires_grad for p in again.generator.parameters())
    z = torch.randn(3, 8)
    torch.testing.assert_close(gan.generator(z), again.generator(z))
    face = load_face_extractor(cache, split, arch="mnist_resnet", train_cfg={"epochs": 1}, seed=1)
    assert face.model.num_classes == 10 and 0 < face.test_acc <= 1


def test_output_defenses_share_the_undefended_target(tmp_path, split):
    cache = ArtifactCache(tmp_path)
    kw = {"arch": "mnist_cnn", "train_cfg": {"epochs": 1}, "seed": 0, "progress": False}
    none = cached_defended_target(cache, split, defense_name="none", **kw)
    rounded = cached_defended_target(
        cache, split, defense_name="rounding", defense_kwargs={"decimals": 1}, **kw
    )
    assert not none.cache_hit and rounded.cache_hit
    assert rounded.defense.postprocess is not None and rounded.natural_acc == none.natural_acc


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mid", {"beta": 0.01}),
        ("tl_dmi", {"pretrain_epochs": 1}),
        # the matched baseline of DP-SGD, as a study lists it: GroupNorm, no noise, no clipping
        pytest.param(
            "dp_sgd",
            {"noise_multiplier": 0, "max_grad_norm": None},
            marks=pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
        ),
    ],
)
def test_defended_target_reloads_identically(tmp_path, split, name, kwargs):
    cache = ArtifactCache(tmp_path)
    kw = {"arch": "mnist_cnn", "train_cfg": {"epochs": 1}, "seed": 0, "progress": False}
    first = cached_defended_target(cache, split, defense_name=name, defense_kwargs=kwargs, **kw)
    again = cached_defended_target(cache, split, defense_name=name, defense_kwargs=kwargs, **kw)
    assert not first.cache_hit and again.cache_hit
    assert type(first.model) is type(again.model)
    for (ka, a), (kb, b) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    frozen = [n for n, p in first.model.named_parameters() if not p.requires_grad]
    assert frozen == [n for n, p in again.model.named_parameters() if not p.requires_grad]
    if name == "tl_dmi":
        assert frozen and again.extra["theta_C"] > 0
    if name == "dp_sgd":
        (saved,) = tmp_path.rglob("*.safetensors")  # the defense's unwrap ran before saving
        assert not any(k.startswith("_module.") for k in load_file(saved))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in again.model.modules())
        assert any(isinstance(m, torch.nn.GroupNorm) for m in again.model.modules())
        assert again.extra["epsilon"] == first.extra["epsilon"] == float("inf")
        assert again.extra["max_grad_norm"] == float("inf")
        assert again.extra["noise_multiplier"] == 0.0
        assert accuracy(again.model, split.private_test) == pytest.approx(again.natural_acc)


def test_public_labelled_excludes_private_classes(split):
    pub = public_labelled(split)
    assert sorted(pub.labels.unique().tolist()) == [0, 1, 2, 3, 4]
    assert len(pub) == len(split.public)


def _fake_defense(received: dict):
    def fake_defense(
        *,
        strength: float = 1.0,
        pretrain_data=None,
        pretrain_num_classes: int = 0,
        train_epochs: int = 100,
        seed: int = 0,
        device: str = "cpu",
        rng=None,
    ) -> Defense:
        received.update(
            strength=strength,
            pretrain_data=pretrain_data,
            pretrain_num_classes=pretrain_num_classes,
            train_epochs=train_epochs,
            seed=seed,
            device=device,
            rng=rng,
        )
        return Defense("fake", config={"strength": strength}, postprocess=lambda p: p)

    return fake_defense


def test_make_defense_fills_every_study_input_the_constructor_asks_for(monkeypatch, split):
    received: dict = {}
    monkeypatch.setitem(DEFENSES, "fake", _fake_defense(received))
    d = make_defense(
        "fake", {"strength": 2.0}, split, train_cfg={"epochs": 7}, seed=3, device="cpu"
    )
    assert d.name == "fake" and dict(d.config) == {"strength": 2.0}
    public = public_labelled(split)
    assert tensor_fingerprint(received.pop("pretrain_data").data) == tensor_fingerprint(public.data)
    assert received == {
        "strength": 2.0,
        "pretrain_num_classes": 5,
        "train_epochs": 7,
        "seed": 3,
        "device": "cpu",
        "rng": None,
    }
    assert set(inspect.signature(DEFENSES["fake"]).parameters) - {"strength"} == set(STUDY_INPUTS)


def test_make_defense_keeps_what_the_caller_set_and_builds_only_what_is_asked(monkeypatch, split):
    received: dict = {}
    monkeypatch.setitem(DEFENSES, "fake", _fake_defense(received))
    mine = public_labelled(split).subset(torch.arange(10))
    make_defense(
        "fake",
        {"pretrain_data": mine, "train_epochs": 2, "seed": 9},
        split,
        train_cfg={},
        seed=3,
    )
    assert received["pretrain_data"] is mine and received["train_epochs"] == 2
    assert received["seed"] == 9
    assert received["pretrain_num_classes"] == int(mine.labels.max()) + 1  # of the data passed

    def no_public(split):
        raise AssertionError("public data built for a defense that does not ask for it")

    monkeypatch.setattr(artifacts, "public_labelled", no_public)
    monkeypatch.setitem(DEFENSES, "plain", lambda *, seed=0: Defense("plain", config={"s": seed}))
    assert dict(make_defense("plain", {}, split, train_cfg={}, seed=4).config) == {"s": 4}
    ls = make_defense("label_smoothing", {"alpha": 0.1}, split, train_cfg={}, seed=0)
    assert ls.config["epochs"] == 10  # train_cfg without epochs: the training loop's default


def _reference_config(name, kwargs, split, train_cfg, seed):
    """The config of the name checks make_defense had before the inputs came from the signature."""
    ctor = DEFENSES[name]
    accepted = inspect.signature(ctor).parameters
    kw = dict(kwargs)
    if name == "tl_dmi" and "pretrain_data" not in kw:
        public = public_labelled(split)
        kw.update(pretrain_data=public, pretrain_num_classes=int(public.labels.max()) + 1)
    if name == "label_smoothing":  # then ``epochs``, now ``train_epochs``
        kw.setdefault("train_epochs", int(train_cfg.get("epochs", 10)))
    if "seed" in accepted:
        kw.setdefault("seed", seed)
    if "device" in accepted:
        kw.setdefault("device", "cpu")
    return dict(ctor(**kw).config)


def _parameter_file_defenses():
    cases = []
    for path in sorted(PARAMETERS.glob("defenses/*.yaml")) + sorted(
        PARAMETERS.glob("adversarial_robustness/*.yaml")
    ):
        cfg = yaml.safe_load(path.read_text())
        specs = [(e["name"], e.get("kwargs", {})) for e in cfg.get("defenses", [])]
        for norm, grid in cfg.get("eps_grid", {}).items():
            specs += [
                ("adversarial_training", {"eps": float(e), "norm": norm, **cfg["at_kwargs"]})
                for e in grid
            ]
        for seed in cfg["seeds"]:
            for name, kwargs in specs:
                tag = f"{path.parent.name}/{path.stem}/{name}/{seed}"
                cases.append(pytest.param(name, kwargs, cfg["target_train"], seed, id=tag))
    return cases


@pytest.mark.parametrize(("name", "kwargs", "train_cfg", "seed"), _parameter_file_defenses())
def test_parameter_file_defenses_keep_their_cache_config(split, name, kwargs, train_cfg, seed):
    got = make_defense(name, kwargs, split, train_cfg=train_cfg, seed=seed, device="cpu")
    assert dict(got.config) == _reference_config(name, kwargs, split, train_cfg, seed)


def test_label_smoothing_config_is_pinned(split):
    # recorded before ``epochs`` became the supplied ``train_epochs``: cached targets keep their key
    got = make_defense("label_smoothing", {"alpha": -0.05}, split, train_cfg={"epochs": 4}, seed=1)
    assert dict(got.config) == {"alpha": -0.05, "epochs": 4, "warmup": True}


def test_a_training_defense_unwrap_hook_runs_before_saving(monkeypatch, tmp_path, split):
    calls = []

    def unwrap(model):
        calls.append(type(model).__name__)
        return model

    def fake_training_defense(*, scale: float = 1.0) -> Defense:
        def loss(logits, labels, *, model, images, epoch):
            return scale * F.cross_entropy(logits, labels)

        return Defense("fake_training", config={"scale": scale}, loss=loss, unwrap=unwrap)

    monkeypatch.setitem(DEFENSES, "fake_training", fake_training_defense)
    kw = {"arch": "mnist_cnn", "train_cfg": {"epochs": 1}, "seed": 0, "progress": False}
    cache = ArtifactCache(tmp_path)
    first = cached_defended_target(cache, split, defense_name="fake_training", **kw)
    again = cached_defended_target(cache, split, defense_name="fake_training", **kw)
    assert not first.cache_hit and again.cache_hit
    assert calls == [type(first.model).__name__]  # once, on the trained model, not on a reload


def test_local_face_weights_fix_the_input_size_and_other_resolutions_are_resized(tmp_path):
    """Weights of a network trained at its own size score images of any resolution, resized."""
    from mibench_lib.artifacts import load_face_extractor
    from mibench_lib.models.base import ResizedInput
    from mibench_lib.testing import make_classifier_weights

    split = load_dataset("digits", resolution=16)
    path = make_classifier_weights(tmp_path / "face.safetensors", "mnist_resnet", 7, (1, 32, 32))
    face = load_face_extractor(
        ArtifactCache(tmp_path / "cache"),
        split,
        arch="mnist_resnet",
        train_cfg={},
        weights=str(path),
    )
    model = face.model
    assert isinstance(model, ResizedInput) and model.input_shape == (1, 16, 16)
    assert model.model.input_shape == (1, 32, 32)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        up = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        assert torch.equal(model.features(x), model.model.features(up))
        assert model(x).shape == (3, model.num_classes)
    with pytest.raises(ValueError, match="channels differ"):
        ResizedInput(model.model, (3, 16, 16))
