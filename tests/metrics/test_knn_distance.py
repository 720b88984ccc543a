import pytest
import torch

from mibench_lib.data._types import ImageSet
from mibench_lib.metrics import MetricUnavailable, feature_knn_distance, knn_distance


def test_hand_computed_nearest_same_class_reference():
    # query (0, 0) class 0: refs of class 0 are (0.3, 0.4) -> 0.25 and (0.1, 0.1) -> 0.02 => 0.02;
    #   the class-1 ref (0, 0) at distance 0 must be ignored.
    # query (1, 1) class 1: class-1 refs (0, 0) -> 2 and (1, 0.5) -> 0.25 => 0.25.
    query = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    ref = torch.tensor([[0.3, 0.4], [0.1, 0.1], [0.0, 0.0], [1.0, 0.5]])
    out = knn_distance(query, torch.tensor([0, 1]), ref, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(out, torch.tensor([0.02, 0.25], dtype=torch.float64))


def test_agrees_with_a_naive_loop():
    q, ql = torch.randn(20, 5), torch.randint(0, 3, (20,))
    r, rl = torch.randn(30, 5), torch.arange(3).repeat(10)
    naive = torch.tensor(
        [
            min(
                float(((qi.double() - rj.double()) ** 2).sum()) for rj, lj in zip(r, rl) if lj == li
            )
            for qi, li in zip(q, ql)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(knn_distance(q, ql, r, rl), naive)


def test_a_query_equal_to_a_reference_has_distance_zero():
    r = torch.randn(4, 3)
    out = knn_distance(r[:2], torch.tensor([0, 0]), r, torch.zeros(4, dtype=torch.int64))
    assert torch.equal(out, torch.zeros(2, dtype=torch.float64))


def test_feature_version_uses_the_model_features_and_ignores_other_classes(flat_classifier):
    points = torch.rand(6, 3)
    ref_labels = torch.tensor([0, 0, 1, 1, 2, 2])
    reference = ImageSet(points[:, :, None, None], ref_labels)
    query, labels = torch.rand(3, 3), torch.tensor([0, 1, 1])
    out = feature_knn_distance(
        flat_classifier(3, (3, 1, 1)), query[:, :, None, None], labels, reference
    )
    torch.testing.assert_close(out, knn_distance(query, labels, points, ref_labels))


def test_class_without_reference_is_unavailable_and_named(flat_classifier):
    with pytest.raises(MetricUnavailable, match="class 2 has no reference"):
        knn_distance(
            torch.zeros(1, 2), torch.tensor([2]), torch.zeros(3, 2), torch.tensor([0, 1, 1])
        )
    reference = ImageSet(torch.rand(2, 3, 1, 1), torch.tensor([0, 0]))
    with pytest.raises(MetricUnavailable, match=r"classes \[1, 4\] have no reference images"):
        feature_knn_distance(
            flat_classifier(2, (3, 1, 1)),
            torch.rand(3, 3, 1, 1),
            torch.tensor([0, 1, 4]),
            reference,
        )


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match="feature sizes differ: queries have 2, references 3"):
        knn_distance(torch.zeros(1, 2), torch.tensor([0]), torch.zeros(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"query_labels must have shape \(2,\), got \(3,\)"):
        knn_distance(
            torch.zeros(2, 2), torch.tensor([0, 0, 0]), torch.zeros(1, 2), torch.tensor([0])
        )
