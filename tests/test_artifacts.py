import pytest
import torch

from mibench_lib.artifacts import (
    cached_classifier,
    cached_gan,
    cached_target_checkpoints,
    load_face_extractor,
)
from mibench_lib.cache import ArtifactCache
from mibench_lib.data import load_dataset
from mibench_lib.models.train import accuracy


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
    from mibench_lib.artifacts import cached_defended_target

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
    from mibench_lib.artifacts import cached_defended_target

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
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in again.model.modules())
        assert any(isinstance(m, torch.nn.GroupNorm) for m in again.model.modules())
        assert again.extra["epsilon"] == first.extra["epsilon"] == float("inf")
        assert again.extra["max_grad_norm"] == float("inf")
        assert again.extra["noise_multiplier"] == 0.0
        assert accuracy(again.model, split.private_test) == pytest.approx(again.natural_acc)


def test_public_labelled_excludes_private_classes(split):
    from mibench_lib.artifacts import public_labelled

    pub = public_labelled(split)
    assert sorted(pub.labels.unique().tolist()) == [0, 1, 2, 3, 4]
    assert len(pub) == len(split.public)
