"""FaceNet64: the IR-50 face classifier at 64 px used as an MI target by KEDMI and PLG-MI.

Chen et al., "Knowledge-Enriched Distributional Model Inversion Attacks", ICCV 2021,
https://arxiv.org/abs/2010.04092 (``FaceNet64`` in their ``classify.py``), on the IR-50 backbone of
face.evoLVe (Deng et al., ArcFace, CVPR 2019, https://arxiv.org/abs/1801.07698). Despite the name it
is not Schroff et al.'s FaceNet: it is the same network as :class:`~mibench_lib.models.irse.IR50_64`
(stem, 24 IR units in stages [3, 4, 14, 3], BN-Dropout-flatten-linear(512 * 4 * 4 -> 512)-BN1d,
then a linear head). It gets its own class and registry name so that configurations read like the
papers. The 112-px evaluator of the literature ("FaceNet" at 112 px) is
``FaceNet64(K, input_shape=(3, 112, 112))``, whose linear layer reads 512 * 7 * 7 values.
"""

from __future__ import annotations

from mibench_lib.models.irse import IRNet64, Normalization


class FaceNet64(IRNet64):
    """IR-50 at 64 px -> 512-d features (after BN1d) -> linear head; see ``IRNet64``.

    Args:
        num_classes: Number of classes K (>= 2).
        input_shape: (C, H, W); (3, 64, 64) in the literature.
        normalization: "face" ((x - 0.5) / 0.5), "imagenet" or "none" (raw [0, 1], needed to reuse
            KEDMI/PLG-MI checkpoints, which were trained on unnormalised images).

    Raises:
        ValueError: see ``IRNet64``.

    Example:
        >>> import torch
        >>> model = FaceNet64(7).eval()
        >>> model.features(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 512])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_shape: tuple[int, int, int] = (3, 64, 64),
        normalization: Normalization = "face",
    ) -> None:
        super().__init__(
            num_classes, depth=50, input_shape=input_shape, normalization=normalization
        )


ZOO = {"facenet64": FaceNet64}
