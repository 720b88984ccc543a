import pytest
import torch

from mibench_lib.metrics import accuracy_from_logits, attack_accuracy, target_accuracy

# Each image holds its own logits (the pixel_logits model). Top-1 / top-2 sets per row:
#   row 0: [0.9, 0.1, 0.2, 0.3] -> top1 {0}, top2 {0, 3}
#   row 1: [0.1, 0.8, 0.7, 0.0] -> top1 {1}, top2 {1, 2}
#   row 2: [0.5, 0.2, 0.6, 0.1] -> top1 {2}, top2 {2, 0}
LOGITS = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.7, 0.0], [0.5, 0.2, 0.6, 0.1]])
IMAGES = LOGITS.reshape(3, 1, 1, 4)
LABELS = torch.tensor([0, 2, 1])  # hits: top1 row 0 only; top2 rows 0 and 1


@pytest.mark.parametrize(("top_k", "expected"), [(1, 1 / 3), (2, 2 / 3), (4, 1.0)])
def test_top_k_matches_hand_count(pixel_logits, top_k, expected):
    assert attack_accuracy(pixel_logits(4), IMAGES, LABELS, top_k=top_k, batch_size=2) == (
        pytest.approx(expected)
    )


def test_label_map_moves_labels_into_the_evaluator_space(pixel_logits):
    # private ids [1, 2, 0] map through [3, 0, 2] to evaluator classes [0, 2, 3] = rows' targets:
    # row 0 -> 0 (top1 hit), row 1 -> 2 (top2 hit), row 2 -> 3 (miss in top2)
    label_map = torch.tensor([3, 0, 2])
    private = torch.tensor([1, 2, 0])
    model = pixel_logits(4)
    assert attack_accuracy(model, IMAGES, private, label_map=label_map) == pytest.approx(1 / 3)
    assert attack_accuracy(model, IMAGES, private, top_k=2, label_map=label_map) == (
        pytest.approx(2 / 3)
    )


def test_target_accuracy_is_top1_of_the_target(pixel_logits):
    assert target_accuracy(pixel_logits(4), IMAGES, LABELS) == pytest.approx(1 / 3)


def test_from_logits_agrees_with_a_naive_loop():
    logits, labels = torch.randn(50, 7), torch.randint(0, 7, (50,))
    for k in (1, 3, 5):
        naive = (
            sum(
                int(y) in torch.argsort(row, descending=True)[:k].tolist()
                for row, y in zip(logits, labels)
            )
            / 50
        )
        assert accuracy_from_logits(logits, labels, top_k=k) == pytest.approx(naive)


def test_errors_name_the_bad_value(pixel_logits):
    model = pixel_logits(4)
    with pytest.raises(ValueError, match=r"top_k must lie in \[1, 4\].*got 5"):
        attack_accuracy(model, IMAGES, LABELS, top_k=5)
    with pytest.raises(ValueError, match=r"got 0"):
        accuracy_from_logits(LOGITS, LABELS, top_k=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got \[7\]"):
        attack_accuracy(model, IMAGES, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match=r"label_map must lie in \[0, 4\), got \[9\]"):
        attack_accuracy(model, IMAGES, LABELS, label_map=torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        attack_accuracy(model, IMAGES, LABELS, label_map=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 rows of logits but 2 labels"):
        accuracy_from_logits(LOGITS, torch.tensor([0, 1]))
