"""Attack accuracy: does an independent evaluation model recognise the reconstructed class?

Attack accuracy (Acc@1, Acc@5) is the share of reconstructions whose intended class is among the
top-k predictions of an evaluation model that the attack never queried (Zhang et al., "The Secret
Revealer", CVPR 2020; used by every MIBench attack). Scoring with the target itself
(:func:`target_accuracy`) is reported next to it: a gap between the two shows images that exploit
the target's decision boundary (adversarial-like) rather than depict the class.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mibench_lib._checks import check_labels
from mibench_lib.metrics.features import Images, predict_logits


def accuracy_from_logits(
    logits: Tensor, labels: Tensor, *, top_k: int = 1, label_map: Tensor | None = None
) -> float:
    """Share of rows whose (mapped) label is among the ``top_k`` largest logits.

    Args:
        logits: (N, C) scores of a classifier with C classes.
        labels: (N,) int64 class ids, in the evaluator's label space unless ``label_map`` is given.
        top_k: How many top predictions count as a hit, 1 <= top_k <= C.
        label_map: (K,) int64 evaluator class of each of the K label ids (e.g. private class ->
            evaluator class); ``None`` when labels already are evaluator classes.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: bad shapes, labels or map entries out of range, top_k outside [1, C].

    Example:
        >>> logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
        >>> labels = torch.tensor([0, 1])
        >>> accuracy_from_logits(logits, labels), accuracy_from_logits(logits, labels, top_k=2)
        (0.5, 1.0)
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k must lie in [1, {num_classes}] (number of classes), got {top_k}")
    if label_map is None:
        check_labels(labels, num_classes)
        mapped = labels
    else:
        if label_map.ndim != 1:
            raise ValueError(f"label_map must have shape (K,), got {tuple(label_map.shape)}")
        check_labels(label_map, num_classes, name="label_map")
        check_labels(labels, label_map.shape[0])
        mapped = label_map[labels.to(label_map.device)]
    if mapped.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {mapped.shape[0]} labels")
    top = logits.topk(top_k, dim=1).indices
    mapped = mapped.to(top.device)
    return float((top == mapped.unsqueeze(1)).any(dim=1).double().mean())


def attack_accuracy(
    evaluator: nn.Module,
    images: Images,
    labels: Tensor,
    *,
    top_k: int = 1,
    label_map: Tensor | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> float:
    """Top-k accuracy of the evaluation model on the reconstructions (Acc@1 with 1, Acc@5 with 5).

    Args:
        evaluator: Classifier, (B, C, H, W) in [0, 1] -> (B, C_eval) logits; it is run in eval
            mode and restored afterwards.
        images: (N, C, H, W) reconstructions in [0, 1].
        labels: (N,) int64 classes the reconstructions should depict.
        top_k: Number of top predictions that count as a hit.
        label_map: (K,) int64 evaluator class of each label id, when the evaluator's label space
            differs from the target's (e.g. an evaluator trained on more identities).
        batch_size: Images per forward pass.
        device: Where the evaluator runs; ``None`` keeps its device.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: labels out of range, or ``top_k`` larger than the evaluator's class count.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> acc = attack_accuracy(tiny_classifier(), x, y)
        >>> 0.0 <= acc <= 1.0
        True
    """
    num_classes = getattr(evaluator, "num_classes", None)
    if isinstance(num_classes, int) and top_k > num_classes:  # fail before the forward passes
        raise ValueError(f"top_k must lie in [1, {num_classes}] (number of classes), got {top_k}")
    logits = predict_logits(evaluator, images, batch_size=batch_size, device=device)
    return accuracy_from_logits(logits, labels, top_k=top_k, label_map=label_map)


def target_accuracy(
    target: nn.Module,
    images: Images,
    labels: Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy of the attacked model itself on its own reconstructions.

    Args:
        target: The attacked classifier; ``labels`` are in its label space.
        images: (N, C, H, W) reconstructions in [0, 1].
        labels: (N,) int64 target classes.
        batch_size: Images per forward pass.
        device: Where the target runs; ``None`` keeps its device.

    Returns:
        Accuracy in [0, 1]; typically above :func:`attack_accuracy`, and the difference measures
        how much of the attack's success does not transfer to an independent model.
    """
    return attack_accuracy(target, images, labels, top_k=1, batch_size=batch_size, device=device)
