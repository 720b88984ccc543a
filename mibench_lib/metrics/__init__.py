"""The MIBench metrics of a set of reconstructions (FID in two feature spaces), plus target accuracy.

Each metric is one line; N reconstructions x_j of private classes y_j, an evaluation model E
(never queried by the attack), private training images of the attacked classes as reference:

- ``acc1``: share of x_j with E's top-1 prediction equal to y_j (mapped into E's label space).
- ``acc5``: share of x_j with y_j among E's 5 highest logits.
- ``delta_eval``: mean over j of min over private x' of class y_j of
  ||E.features(x_j) - E.features(x')||^2 (squared KNN distance).
- ``delta_face``: the same squared KNN distance in a second, independent feature extractor
  (a face-recognition network, or an evaluator of another architecture).
- ``fid_eval``: Fréchet distance between Gaussians fitted to reconstruction and private features
  in E's penultimate feature space. Not comparable with published FIDs, whatever the data.
- ``fid_inception``: the same in the FID-Inception network's pool3 space (the FID of published
  work; needs its weights file, NaN without it).
- ``precision``: per class, share of reconstructions inside some private sample's k-NN ball
  (Naeem et al. 2020, k = 3), averaged over the classes with enough samples.
- ``recall``: per class, share of private samples inside some reconstruction's k-NN ball, averaged.
- ``density``: per class, mean number of private k-NN balls holding a reconstruction, over k.
- ``coverage``: per class, share of private samples whose k-NN ball holds a reconstruction.
  (PRDC is computed in the FID-Inception space when its weights are given, else in E's; MIBench's
  variant of the four is available as ``*_mibench``.)
- ``target_acc``: top-1 accuracy of the attacked model itself on the reconstructions.

Every function runs gradient-free in batches and raises :class:`MetricUnavailable` (never returns
0 or NaN) when its value cannot be computed. :func:`evaluate_reconstructions` computes them all.
"""

from mibench_lib.metrics._errors import MetricUnavailable
from mibench_lib.metrics.accuracy import accuracy_from_logits, attack_accuracy, target_accuracy
from mibench_lib.metrics.evaluate import evaluate_reconstructions
from mibench_lib.metrics.features import extract_features, predict_logits
from mibench_lib.metrics.fid import FIDInceptionV3, fid, frechet_distance, load_fid_inception
from mibench_lib.metrics.knn_distance import feature_knn_distance, knn_distance
from mibench_lib.metrics.prdc import (
    PRDC_KEYS,
    PRDC_VARIANTS,
    ClassPRDC,
    class_mean_prdc,
    prdc,
    prdc_keys,
    prdc_per_class,
)

#: Metric name -> the function computing it (Acc@5 is ``attack_accuracy(..., top_k=5)``; delta_eval
#: and delta_face are ``feature_knn_distance`` with the evaluator or the face model, then a mean).
METRICS = {
    "attack_accuracy": attack_accuracy,
    "target_accuracy": target_accuracy,
    "knn_distance": feature_knn_distance,
    "fid": fid,
    "prdc": class_mean_prdc,
}

__all__ = [
    "METRICS",
    "PRDC_KEYS",
    "PRDC_VARIANTS",
    "ClassPRDC",
    "FIDInceptionV3",
    "MetricUnavailable",
    "accuracy_from_logits",
    "attack_accuracy",
    "class_mean_prdc",
    "evaluate_reconstructions",
    "extract_features",
    "feature_knn_distance",
    "fid",
    "frechet_distance",
    "knn_distance",
    "load_fid_inception",
    "prdc",
    "prdc_keys",
    "prdc_per_class",
    "predict_logits",
    "target_accuracy",
]
