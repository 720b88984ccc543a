"""Removal of Last-Stage Skip connections (RoLSS) as a model-inversion defense.

Koh et al., "On the Vulnerability of Skip Connections to Model Inversion Attacks", ECCV 2024,
https://arxiv.org/abs/2409.01696.

The paper finds that skip connections, above all those of the last stage, carry much of what
inversion attacks exploit, and that removing them there costs little accuracy. Every residual block
of the last stage (or of the last ``stages`` stages) is replaced by its residual branch alone,
followed by the block's own final activation: ``y = act(F(x))`` instead of ``y = act(F(x) + S(x))``.
The projection shortcut of a stage's downsampling block is removed with its parameters. The model
is then trained (or fine-tuned) with the modified architecture; dropping the skips only at
inference, or re-parameterising them away (RepVGG-style), is not this defense.

Supported architectures and what a "stage" is:

- :class:`~mibench_lib.models.resnet.ResNetClassifier` (torchvision ``BasicBlock`` /
  ``Bottleneck``): ``net.layer1`` ... ``net.layer4``; the last stage is ``layer4``;
- :class:`~mibench_lib.models.irse.IRNet64` (IR-50/IR-152, FaceNet64): the four stages of
  ``feature.body`` given by ``stage_ranges``; IR units have no activation after the sum;
- :class:`~mibench_lib.models.small_cnn.MnistResNet`: each of its residual blocks is a stage, so the
  last stage is its last block.

Paper default: the last stage (``stages=1``).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from mibench_lib.defenses._defense import Defense
from mibench_lib.models.irse import BottleneckIR, IRNet64
from mibench_lib.models.resnet import ResNetClassifier
from mibench_lib.models.small_cnn import MnistResNet, _BasicBlock


class SkiplessBlock(nn.Module):
    """A residual block without its skip connection: ``activation(residual(x))``.

    Args:
        residual: The block's residual branch, whose weights are shared with the original block.
        activation: The activation the block applied after the sum (None: none).

    Example:
        >>> import torch
        >>> block = SkiplessBlock(nn.Linear(3, 3), nn.ReLU())
        >>> bool((block(torch.randn(2, 3)) >= 0).all())
        True
    """

    def __init__(self, residual: nn.Module, activation: nn.Module | None) -> None:
        super().__init__()
        self.residual = residual
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Residual branch, then the final activation; no ``+ x``."""
        return self.activation(self.residual(x))


def residual_stages(model: nn.Module) -> list[tuple[nn.Sequential, list[int]]]:
    """The residual stages of ``model`` in forward order, as (container, block indices) pairs.

    Args:
        model: A ``ResNetClassifier``, an ``IRNet64`` (IR-50/152, FaceNet64) or a ``MnistResNet``.

    Returns:
        One ``(container, [indices])`` per stage; ``container[i]`` is a block of that stage.

    Raises:
        ValueError: ``model`` is not one of the supported residual networks.

    Example:
        >>> from mibench_lib.models.resnet import ResNetClassifier
        >>> [len(idx) for _, idx in residual_stages(ResNetClassifier(3, arch="resnet18"))]
        [2, 2, 2, 2]
    """
    if isinstance(model, ResNetClassifier):
        layers = [getattr(model.net, f"layer{i}") for i in range(1, 5)]
        return [(layer, list(range(len(layer)))) for layer in layers]
    if isinstance(model, IRNet64):
        return [(model.feature.body, list(r)) for r in model.stage_ranges]
    if isinstance(model, MnistResNet):
        body = model.body
        return [
            (body, [i]) for i, m in enumerate(body) if isinstance(m, _BasicBlock | SkiplessBlock)
        ]
    raise ValueError(
        f"RoLSS needs a residual network (ResNetClassifier, IRNet64/FaceNet64 or MnistResNet); "
        f"{type(model).__name__} has no residual blocks it knows of"
    )


def remove_skip(block: nn.Module) -> SkiplessBlock:
    """The :class:`SkiplessBlock` of a residual block, sharing its residual-branch modules.

    Args:
        block: A torchvision ``BasicBlock`` or ``Bottleneck``, an IR ``BottleneckIR`` or a
            ``MnistResNet`` block.

    Returns:
        The skipless block; the shortcut (identity, strided identity or 1x1 projection) is dropped.

    Raises:
        ValueError: an unsupported block type, or a block whose skip is already removed.
    """
    if isinstance(block, SkiplessBlock):
        raise ValueError("this block's skip connection is already removed")
    if isinstance(block, BasicBlock):
        branch = nn.Sequential(block.conv1, block.bn1, block.relu, block.conv2, block.bn2)
        return SkiplessBlock(branch, block.relu)
    if isinstance(block, Bottleneck):
        branch = nn.Sequential(
            block.conv1, block.bn1, block.relu, block.conv2, block.bn2, block.relu,
            block.conv3, block.bn3,
        )  # fmt: skip
        return SkiplessBlock(branch, block.relu)
    if isinstance(block, BottleneckIR):
        return SkiplessBlock(block.res_layer, None)  # IR units add without a final activation
    if isinstance(block, _BasicBlock):
        return SkiplessBlock(block.branch, nn.ReLU())
    raise ValueError(f"cannot remove the skip connection of a {type(block).__name__}")


def remove_last_stage_skips(model: nn.Module, *, stages: int = 1) -> int:
    """Replace, in place, every block of the last ``stages`` stages by its skipless version.

    Args:
        model: A supported residual network (see :func:`residual_stages`).
        stages: Number of trailing stages to modify, 1 <= stages <= number of stages.

    Returns:
        The number of blocks modified.

    Raises:
        ValueError: an unsupported model, ``stages`` out of range, or skips already removed.

    Example:
        >>> from mibench_lib.models.resnet import ResNetClassifier
        >>> remove_last_stage_skips(ResNetClassifier(3, arch="resnet18"))
        2
    """
    all_stages = residual_stages(model)
    if not 1 <= stages <= len(all_stages):
        raise ValueError(
            f"stages must lie in [1, {len(all_stages)}] for {type(model).__name__}, got {stages}"
        )
    modified = 0
    for container, indices in all_stages[-stages:]:
        for i in indices:
            container[i] = remove_skip(container[i])
            modified += 1
    return modified


def rolss_defense(*, stages: int = 1) -> Defense:
    """Remove the skip connections of the last ``stages`` stage(s) before training.

    Args:
        stages: Knob: how many trailing stages lose their skips (paper: 1, the last stage).

    Returns:
        ``Defense("rolss")`` whose ``build`` applies :func:`remove_last_stage_skips` in place.

    Raises:
        ValueError: ``stages`` not an integer >= 1 (the upper bound is checked at build time).

    Example:
        >>> import torch
        >>> from mibench_lib.models.small_cnn import MnistResNet
        >>> model = rolss_defense().build(MnistResNet(5, input_shape=(1, 16, 16)))
        >>> type(model.body[3]).__name__, model(torch.rand(2, 1, 16, 16)).shape
        ('SkiplessBlock', torch.Size([2, 5]))
    """
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages must be an integer >= 1, got {stages!r}")

    def build(model: nn.Module) -> nn.Module:
        remove_last_stage_skips(model, stages=stages)
        return model

    return Defense("rolss", config={"stages": stages}, knob="stages", build=build)
