"""Small CNNs for the embedded default (MNIST digits at 16-64 px, one channel).

Three deliberately different architectures, so that an image which fools one does not
automatically fool the others:

- :class:`MnistCNN` (``"mnist_cnn"``): the target, shaped like GMI's MNIST target (strided
  convolutions with BatchNorm, then a fully connected feature layer). Strided convolutions keep the
  1,500-step GMI latent search cheap on a CPU.
- :class:`MnistEvaluator` (``"mnist_eval"``): the evaluation model, a VGG-style network with
  stride-1 convolutions, max pooling and dropout, trained on all ten digits.
- :class:`MnistResNet` (``"mnist_resnet"``): a small residual network, the independent second feature
  extractor behind delta_face when no face-recognition weights are supplied.
"""

from __future__ import annotations

from torch import Tensor, nn

from mibench_lib.models.base import Classifier


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class MnistCNN(Classifier):
    """Target CNN: 3 strided conv-BN-ReLU layers -> flatten -> linear(feature_dim)-ReLU -> head.

    Args:
        num_classes: Number of private classes.
        input_shape: (C, H, W); H and W divisible by 8.
        width: Channels of the first convolution (doubled at each layer).
        feature_dim: Size of the penultimate layer.

    Example:
        >>> import torch
        >>> MnistCNN(5, input_shape=(1, 32, 32))(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_shape: tuple[int, int, int] = (1, 32, 32),
        width: int = 16,
        feature_dim: int = 128,
    ) -> None:
        super().__init__(num_classes, feature_dim, input_shape)
        c, h, w = input_shape
        if h % 8 or w % 8:
            raise ValueError(f"MnistCNN needs H and W divisible by 8, got {input_shape}")
        self.body = nn.Sequential(
            _conv_bn(c, width, 5, 2),
            _conv_bn(width, 2 * width, 5, 2),
            _conv_bn(2 * width, 4 * width, 3, 2),
            nn.Flatten(),
            nn.Linear(4 * width * (h // 8) * (w // 8), feature_dim),
            nn.ReLU(),
        )

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, feature_dim)."""
        return self.body(x * 2 - 1)


class MnistEvaluator(Classifier):
    """Evaluation CNN: 4 x [conv3x3-BN-ReLU, maxpool] -> dropout -> linear(feature_dim)-BN-ReLU -> head.

    VGG-style (stride-1 convolutions with max pooling, dropout, a BatchNorm feature layer): a
    different inductive bias from the strided target, at a cost that trains in seconds per epoch.
    The four max-pools leave H/16 x W/16 (1 x 1 at 16 px, 4 x 4 at 64 px), which the adaptive
    pooling brings to 2 x 2, so the feature layer has the same size at every resolution.

    Args:
        num_classes: Number of classes (10 for the evaluator of the digit splits).
        input_shape: (C, H, W); H and W at least 16 (four 2x2 max-pools).
        width: Channels of the first convolution (doubled at each of the four layers).
        feature_dim: Size of the penultimate layer.
        dropout: Dropout probability before the feature layer.

    Raises:
        ValueError: an input smaller than 16 x 16 px.

    Example:
        >>> import torch
        >>> MnistEvaluator(10, input_shape=(1, 32, 32))(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_shape: tuple[int, int, int] = (1, 32, 32),
        width: int = 16,
        feature_dim: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_classes, feature_dim, input_shape)
        if min(input_shape[1:]) < 16:
            raise ValueError(f"MnistEvaluator needs H and W >= 16, got {input_shape}")
        layers: list[nn.Module] = []
        cin = input_shape[0]
        for i in range(4):
            cout = width * 2**i
            layers += [_conv_bn(cin, cout, 3, 1), nn.MaxPool2d(2)]
            cin = cout
        self.body = nn.Sequential(
            *layers,
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(cin * 4, feature_dim),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(),
        )

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, feature_dim)."""
        return self.body((x - 0.1307) / 0.3081)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        return (self.branch(x) + self.shortcut(x)).relu()


class MnistResNet(Classifier):
    """Small ResNet: strided stem, 3 stages of one basic block, global average pool.

    The independent second feature extractor behind delta_face on the embedded default.

    Example:
        >>> import torch
        >>> MnistResNet(10, input_shape=(1, 32, 32)).features(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self, num_classes: int, *, input_shape: tuple[int, int, int] = (1, 32, 32), width: int = 16
    ) -> None:
        super().__init__(num_classes, 4 * width, input_shape)
        c = input_shape[0]
        self.body = nn.Sequential(
            _conv_bn(c, width, 3, 2),
            _BasicBlock(width, width, 1),
            _BasicBlock(width, 2 * width, 2),
            _BasicBlock(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, 4 * width)."""
        return self.body(x * 2 - 1)


ZOO = {"mnist_cnn": MnistCNN, "mnist_eval": MnistEvaluator, "mnist_resnet": MnistResNet}
