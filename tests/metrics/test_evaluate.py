import math

import pytest
import torch
from torch import Tensor, nn

from mibench_lib.data._types import ImageSet
from mibench_lib.metrics import (
    MetricUnavailable,
    attack_accuracy,
    class_mean_prdc,
    evaluate_reconstructions,
    frechet_distance,
    knn_distance,
    target_accuracy,
)

KEYS = ["acc1", "acc5", "delta_eval", "fid_eval", "precision", "recall", "density", "coverage"]
TAIL = ["prdc_features", "prdc_skipped"]


@pytest.fixture
def setting(flat_classifier):
    """2-D points as (N, 2, 1, 1) images. Private classes 0-2 are attacked; class 3 is not, and
    sits far away (near 1) so that including it would move FID."""
    private_points = torch.cat([torch.rand(15, 2) * 0.5, 0.9 + torch.rand(5, 2) * 0.1])
    private_labels = torch.cat([torch.arange(3).repeat(5), torch.full((5,), 3)])
    fake_points = torch.rand(12, 2) * 0.6
    fake_labels = torch.arange(3).repeat(4)
    return {
        "private": ImageSet(private_points[:, :, None, None], private_labels),
        "private_points": private_points,
        "private_labels": private_labels,
        "fake_points": fake_points,
        "images": fake_points[:, :, None, None],
        "labels": fake_labels,
        "evaluator": flat_classifier(6, (2, 1, 1)),
        "label_map": torch.tensor([5, 4, 3, 2]),
    }


def test_each_value_equals_its_metric_on_the_attacked_classes(setting, flat_classifier):
    s = setting

    class Doubled(flat_classifier):
        def features(self, x: Tensor) -> Tensor:
            return 2 * x.flatten(1)

    target = flat_classifier(4, (2, 1, 1))
    out = evaluate_reconstructions(
        s["images"],
        s["labels"],
        evaluator=s["evaluator"],
        private_train=s["private"],
        label_map=s["label_map"],
        target=target,
        face_model=Doubled(3, (2, 1, 1)),
        batch_size=5,
    )
    assert list(out) == [
        *KEYS[:3],
        "delta_face",
        "fid_eval",
        "fid_inception",
        *KEYS[4:],
        "target_acc",
        *TAIL,
    ]
    keep = s["private_labels"] < 3
    real, real_labels = s["private_points"][keep], s["private_labels"][keep]
    fake, labels = s["fake_points"], s["labels"]
    expected = {
        "acc1": attack_accuracy(s["evaluator"], s["images"], labels, label_map=s["label_map"]),
        "acc5": attack_accuracy(
            s["evaluator"], s["images"], labels, top_k=5, label_map=s["label_map"]
        ),
        "delta_eval": float(knn_distance(fake, labels, real, real_labels).mean()),
        "fid_eval": frechet_distance(real, fake),
        **{m: v for m, v in class_mean_prdc(real, real_labels, fake, labels).items() if m in KEYS},
        "target_acc": target_accuracy(target, s["images"], labels),
    }
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-5), key
    # features doubled -> squared distances times 4
    assert out["delta_face"] == pytest.approx(4 * out["delta_eval"], rel=1e-5)
    assert out["prdc_features"] == "evaluator" and out["prdc_skipped"] == ""
    assert math.isnan(out["fid_inception"])  # not asked for (no weights): NaN, and no error
    assert out["fid_eval"] != pytest.approx(frechet_distance(s["private_points"], fake), rel=1e-2)


def test_optional_keys_are_absent_without_their_models(setting):
    s = setting
    out = evaluate_reconstructions(
        s["images"], s["labels"], evaluator=s["evaluator"], private_train=s["private"]
    )
    assert list(out) == [*KEYS[:4], "fid_inception", *KEYS[4:], *TAIL]
    assert all(math.isfinite(out[key]) for key in KEYS)


def test_strict_raises_and_non_strict_records_nan_with_reason(setting, flat_classifier):
    s = setting
    four_class = flat_classifier(4, (2, 1, 1))
    with pytest.raises(MetricUnavailable, match="Acc@5 needs an evaluator with >= 5 classes"):
        evaluate_reconstructions(
            s["images"], s["labels"], evaluator=four_class, private_train=s["private"]
        )
    out = evaluate_reconstructions(
        s["images"], s["labels"], evaluator=four_class, private_train=s["private"], strict=False
    )
    assert math.isnan(out["acc5"]) and list(out["unavailable"]) == ["acc5", "fid_inception"]
    assert "no inception_weights given" in out["unavailable"]["fid_inception"]
    assert all(math.isfinite(out[key]) for key in KEYS if key != "acc5")


def test_missing_inception_weights_make_fid_inception_and_prdc_unavailable(setting, tmp_path):
    s = setting
    out = evaluate_reconstructions(
        s["images"],
        s["labels"],
        evaluator=s["evaluator"],
        private_train=s["private"],
        inception_weights=tmp_path / "missing.pth",
        strict=False,
    )
    assert out["prdc_features"] == "inception"
    assert sorted(out["unavailable"]) == sorted(
        ["fid_inception", "precision", "recall", "density", "coverage"]
    )
    assert all("weights file not found" in reason for reason in out["unavailable"].values())
    assert all(math.isnan(out[key]) for key in out["unavailable"])
    assert math.isfinite(out["delta_eval"]) and math.isfinite(out["fid_eval"])
    with pytest.raises(MetricUnavailable, match="weights file not found"):  # asked for: strict
        evaluate_reconstructions(
            s["images"],
            s["labels"],
            evaluator=s["evaluator"],
            private_train=s["private"],
            inception_weights=tmp_path / "missing.pth",
        )


class _HalfFeatures(nn.Module):
    """Stands in for the FID-Inception network: features(x) = x flattened / 2."""

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1) / 2


def test_inception_weights_add_fid_inception_and_move_prdc_there(setting, tmp_path, monkeypatch):
    from mibench_lib.metrics import evaluate as evaluate_module

    s = setting
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in")
    loaded = []

    def fake_loader(path):
        loaded.append(path)
        return _HalfFeatures()

    monkeypatch.setattr(evaluate_module, "load_fid_inception", fake_loader)
    evaluate_module._cached_fid_inception.cache_clear()
    try:
        kwargs = {"evaluator": s["evaluator"], "private_train": s["private"]}
        out = evaluate_reconstructions(
            s["images"], s["labels"], inception_weights=weights, reference_cache={}, **kwargs
        )
        again = evaluate_reconstructions(
            s["images"], s["labels"], inception_weights=weights, **kwargs
        )
    finally:
        evaluate_module._cached_fid_inception.cache_clear()
    assert loaded == [str(weights.resolve())]  # loaded once per process, not at every call
    keep = s["private_labels"] < 3
    real, real_labels = s["private_points"][keep], s["private_labels"][keep]
    fake, labels = s["fake_points"], s["labels"]
    assert out["fid_inception"] == pytest.approx(frechet_distance(real / 2, fake / 2), rel=1e-5)
    assert out["fid_eval"] == pytest.approx(frechet_distance(real, fake), rel=1e-5)
    expected = class_mean_prdc(real / 2, real_labels, fake / 2, labels)
    assert {m: out[m] for m in KEYS[4:]} == {m: pytest.approx(expected[m]) for m in KEYS[4:]}
    assert out["prdc_features"] == "inception"
    assert again["fid_inception"] == out["fid_inception"]


def test_mibench_prdc_variant_has_its_own_keys(setting):
    s = setting
    # MIBench's variant needs k + 2 = 5 samples per class: add a fifth reconstruction to each
    fake = torch.cat([s["fake_points"], s["fake_points"][:3] * 0.9])
    labels = torch.cat([s["labels"], s["labels"][:3]])
    kwargs = {"evaluator": s["evaluator"], "private_train": s["private"]}
    out = evaluate_reconstructions(fake[:, :, None, None], labels, prdc_variant="mibench", **kwargs)
    names = ["precision_mibench", "recall_mibench", "density_mibench", "coverage_mibench"]
    assert list(out) == [*KEYS[:4], "fid_inception", *names, *TAIL]
    assert out["prdc_skipped"] == ""
    keep = s["private_labels"] < 3
    real, real_labels = s["private_points"][keep], s["private_labels"][keep]
    expected = class_mean_prdc(real, real_labels, fake, labels, variant="mibench")
    for name in names:
        assert out[name] == pytest.approx(expected[name.removesuffix("_mibench")]), name
    with pytest.raises(ValueError, match=r"variant must be one of.*got 'MIBench'"):
        evaluate_reconstructions(fake[:, :, None, None], labels, prdc_variant="MIBench", **kwargs)


def test_too_few_reconstructions_per_class_for_prdc(setting):
    s = setting  # 4 reconstructions per class; k + 1 = 4 are needed
    kwargs = {"evaluator": s["evaluator"], "private_train": s["private"], "strict": False}
    # class 2 keeps 3: skipped and named, PRDC is the mean over classes 0 and 1
    out = evaluate_reconstructions(s["images"][:11], s["labels"][:11], **kwargs)
    assert sorted(out["unavailable"]) == ["fid_inception"]
    assert "for class 2, fake features has 3" in out["prdc_skipped"]
    keep = s["private_labels"] < 3
    expected = class_mean_prdc(
        s["private_points"][keep],
        s["private_labels"][keep],
        s["fake_points"][:11],
        s["labels"][:11],
    )
    assert expected["classes"] == [0, 1]
    assert {m: out[m] for m in KEYS[4:]} == {m: pytest.approx(expected[m]) for m in KEYS[4:]}
    # 3 per class everywhere: every class skipped, PRDC unavailable with each reason
    out = evaluate_reconstructions(s["images"][:9], s["labels"][:9], **kwargs)
    assert sorted(out["unavailable"]) == [
        "coverage",
        "density",
        "fid_inception",
        "precision",
        "recall",
    ]
    reason = out["unavailable"]["precision"]
    assert reason.startswith("PRDC skipped every class")
    assert all(f"for class {c}, fake features has 3" in reason for c in range(3))
    assert math.isfinite(out["fid_eval"])


def test_attacked_class_absent_from_private_data(setting):
    s = setting
    labels = s["labels"].clone()
    labels[:4] = 5  # no private image of class 5
    out = evaluate_reconstructions(
        s["images"], labels, evaluator=s["evaluator"], private_train=s["private"], strict=False
    )
    assert "class 5 has no reference" in out["unavailable"]["delta_eval"]


def test_bad_labels_raise_value_error(setting):
    s = setting
    with pytest.raises(ValueError, match=r"labels must be int64 of shape \(12,\)"):
        evaluate_reconstructions(
            s["images"], s["labels"].float(), evaluator=s["evaluator"], private_train=s["private"]
        )
    with pytest.raises(ValueError, match="private class ids >= 0, got -1"):
        evaluate_reconstructions(
            s["images"], s["labels"] - 1, evaluator=s["evaluator"], private_train=s["private"]
        )


def test_reference_cache_computes_private_features_once_and_changes_nothing(setting, monkeypatch):
    from mibench_lib.metrics import evaluate as evaluate_module

    s = setting
    seen = []
    real_extract = evaluate_module.extract_features

    def counting(model, images, *, name, **kw):
        seen.append(name)
        return real_extract(model, images, name=name, **kw)

    monkeypatch.setattr(evaluate_module, "extract_features", counting)
    kwargs = {"evaluator": s["evaluator"], "private_train": s["private"], "strict": False}
    plain = evaluate_reconstructions(s["images"], s["labels"], **kwargs)
    assert seen.count("private images") == 1
    seen.clear()
    memo: dict = {}
    first = evaluate_reconstructions(s["images"], s["labels"], reference_cache=memo, **kwargs)
    second = evaluate_reconstructions(s["images"], s["labels"], reference_cache=memo, **kwargs)
    assert seen.count("private images") == 1 and seen.count("reconstructions") == 2
    subset = evaluate_reconstructions(
        s["images"][:3], s["labels"][:3], reference_cache=memo, **kwargs
    )
    assert seen.count("private images") == 1  # classes 0-2 again: same reference set
    for key in ("delta_eval", "fid_eval", "acc1"):
        assert first[key] == second[key] == pytest.approx(plain[key]), key
    assert subset["delta_eval"] == pytest.approx(
        evaluate_reconstructions(s["images"][:3], s["labels"][:3], **kwargs)["delta_eval"]
    )
