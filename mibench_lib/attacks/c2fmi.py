"""Coarse-to-fine model inversion (C2FMI): Ye, Luo, Zhou, Li, Chen, Zhang, Wu and Xiang,
"C2FMI: Corse-to-Fine Black-box Model Inversion Attack", IEEE TDSC 2023,
https://doi.org/10.1109/TDSC.2023.3285071.

Algorithm. A black-box attacker reads the target's probabilities and holds three public
networks: a style-based generator ``G`` (mapping ``z -> w``, synthesis ``w -> image``), an
*embedding network* ``E`` (a classifier of another architecture, trained on a labelled public
dataset of other identities) and an *adapter* ``A`` that maps the target's output vector to
``E``'s classifier logits.

0. **Priors.** ``E`` (:data:`C2FMI_EMBEDDING`, a :class:`PublicPrior`) is trained with
   cross-entropy on the labelled public images; its logits on every public image are stored.
   The target is queried once on every public image (:data:`C2FMI_ADAPTER`, a
   :class:`TargetPrior`); the released outputs are stored. At the start of the attack the
   adapter MLP ``K -> h -> h -> dropout 0.25 -> E`` (LeakyReLU 0.2) is regressed with MSE from
   :func:`adapter_input` (released output) to ``E``'s logits of the same image: Adam 1e-3,
   StepLR(2, 0.8) per epoch, 20 epochs, batches of 128 (:func:`train_adapter`; no queries).
1. **Coarse stage** (no queries). Per label entry, ``starts = 16`` vectors ``w``, each the mean of
   2 mapped random ``z``. For ``coarse_steps = 20`` Adam steps (lr 0.02, StepLR(20, 0.95)) each
   ``w`` descends ``MSE(E(G(w)), A(pseudo))``, where ``pseudo`` is a fresh ``|N(0, I)|`` vector
   with ``1e18`` at the label, L2-normalised (:func:`pseudo_prediction`), put through the
   adapter's own input transform. Gradients flow through ``G`` and ``E`` only. Then one query per
   start: the ``keep = 10`` starts with the highest fitness survive.
2. **Fine stage**, differential evolution (the official ``DE_c2b_5_bin2``) in W space, black-box:
   the ``population = 32`` members are the 10 survivors plus 22 made as
   ``0.7 (0.25 x1 + 0.25 x2 + 0.5 x3) + 0.3 w_r`` (``x1, x2, x3`` three distinct survivors,
   ``w_r`` the mean of 3 freshly mapped ``z``). Each generation ``g`` of ``generations = 500``:
   the parents are scored (32 queries), the best parent ``x_best`` is found, each member ``x_i``
   gets the mutant ``x_i + 0.02 (x_best - x_i) + sum_{k<4} beta (x_a - x_b)`` (4 pairs drawn
   uniformly with replacement from the population; ``beta = 0.1``, and
   ``0.1 (generations - g) / 50`` in the last 30 generations), binomial crossover with its
   parent (each coordinate from the mutant with probability 0.5), the trials are scored (32
   queries) and each trial replaces its parent iff its fitness is strictly higher (greedy, on the
   raw fitness). Finally the population is scored once more and the best member is the output.

Fitness (:func:`de_fitness`): the released ``p_y``; with ``top_m = M`` (the official
anti-defense run, ``utils/DE_mask.py``) ``p_y`` if ``y`` is among the ``M`` largest released
scores, else minus the sum of those ``M`` scores.

Queries per label entry: ``starts`` (selection) ``+ 2 population`` per generation ``+
population`` (final scoring): 16 + 64 x 500 + 32 = 32,048 with the defaults; the adapter prior's
``len(public)`` (or ``max_images``) are counted by the study as ``prior_queries``.

Relation to the official code (MiLabHITSZ/2022YeC2FMI: ``main_attack.py``,
``main_attack_antidefense.py``, ``models/predict2feature.py``, ``utils/train_inv.py``,
``utils/DE.py``, ``utils/DE_mask.py``):

- Networks. The official ``G`` is rosinality's StyleGAN2 at 128 px, ``E`` an InceptionResNetV1
  trained on CASIA-WebFace (10,575 identities) and the target a MobileNet on FaceScrub (526);
  generated images are resized to the face networks' 160 px. Here ``G`` is the library's style
  generator (the ``"style_generator"`` prior), ``E`` any zoo architecture (``arch``, default
  ``"mnist_resnet"``, unlike the embedded default's ``"mnist_cnn"`` target) trained on the
  public split's own labels with the library's training loop, and generated images are resized
  (bilinear) to the target's input size when their size differs. ``adapter_hidden`` is the
  official 4,096 by default.
- Adapter data. Officially the adapter trains on 150,000 public images and validates on 10,000
  more, each labelled by a target query during training. Here every public image (or a seeded
  subset of ``max_images``) is queried once, by the prior, and ``adapter_val_fraction`` (default
  1/16 = 10k/160k) of them, drawn with the attack's seed, are held out for the reported
  validation loss. Incomplete batches are dropped, as officially (``drop_last``), except that a
  training set smaller than one batch is one batch. Behind an output defense the stored outputs
  are what the defense released.
- Batching. All label entries run together: one oracle call per scoring (chunked only by
  ``chunk``). The coarse loss is the sum over entries of each entry's mean squared error over
  its ``starts`` and ``E``'s classes, so every ``w`` gets exactly the official gradient.
- Selection. Officially the 16 starts are scored on the images generated *before* the 20th
  Adam update and the differential evolution then starts from the updated latents; here the
  selection scores the latents the evolution starts from. With ``top_m`` set, the official
  anti-defense script keeps all 16 starts (so the population is 16 + 16); here selection uses
  the top-M fitness and ``keep`` as in the main script (pass ``keep=16`` for the official).
- Parent re-scoring. Each generation re-scores the parents (as officially), although for a
  deterministic release their fitness is already known; this matters only for a noisy release
  (a randomised output defense), where a lucky draw does not stay the incumbent for ever. The
  final scoring of the population (official ``get_img``) is kept too; ``final_rescore=False``
  picks the output from the last generation's fitness instead and saves ``population`` queries
  per entry. Neither changes anything for a deterministic target.
- ``top_m``. ``None`` keeps every class (``main_attack.py``); an integer is the anti-defense
  variant (adapter input and fitness restricted to the top M; official 100). ``"auto"``
  (default) reads the release from the oracle's access level: ``"top-k"`` gives ``M = k``
  (the defense's k; if the adapter's data came through a smaller k, that one), ``"label"`` gives
  ``M = 1`` (one-hot scores), richer releases ``None``. The count of non-zero scores is not
  used: a rounding defense zeroes a varying number of small probabilities per row. Without
  ``top_m``, zeros in a release map to ``log`` clamped at -1,000, as officially. Under
  ``top_m``, ``y`` counts as released only if its score is non-zero.
- Randomness. The official code draws from NumPy's and torch's global generators; here every
  draw comes from ``rng`` on the CPU (starts, pseudo vectors, triplets, fresh latents, pairs,
  crossover masks) and the adapter is initialised and trained from a seed drawn from ``rng``,
  so a run is seed-deterministic. ``randint``-with-rejection triplets become the first three
  entries of a random permutation (the same distribution).
- Budget. A generation runs only if both of its scorings fit the oracle's budget; otherwise the
  search stops and the best member by the last known fitness is returned
  (``extras["stopped_by_budget"]``). If the selection itself does not fit, only the first
  affordable starts (entry-major order) are scored, each entry returns its best scored start
  (its first start if none was scored) and no evolution runs.
- Kept official quirks: ``beta`` jumps from 0.1 to 0.06 at ``generations - 30``; crossover has
  no guaranteed mutant coordinate; difference pairs may repeat a member (a zero difference);
  the start pool's ``z`` are mapped with truncation 1. Not reproduced: saving image files, the
  unused ``disturb`` noise (0 officially) and MIBench's softmax-normalised greedy test (which
  compares two populations' softmax scores, so a uniform improvement replaces nothing).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib._checks import check_int, check_labels, check_real
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._query import affordable, released_scores
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec, PublicPrior, TargetPrior
from mibench_lib.attacks._style_prior import STYLE_GENERATOR
from mibench_lib.cache import tensor_fingerprint
from mibench_lib.data._types import ImageSet
from mibench_lib.oracle import TargetOracle

__all__ = [
    "C2FMI_ADAPTER",
    "C2FMI_EMBEDDING",
    "SPEC",
    "AdapterData",
    "AdapterMLP",
    "Embedding",
    "adapter_input",
    "build_c2fmi_adapter",
    "build_c2fmi_embedding",
    "c2fmi_attack",
    "de_fitness",
    "de_select",
    "load_c2fmi_adapter",
    "load_c2fmi_embedding",
    "pseudo_prediction",
    "train_adapter",
]


# ------------------------------------------------------------------------------- the adapter
def adapter_input(scores: Tensor, top_m: int | None = None) -> Tensor:
    """The adapter's input transform of released scores (official ``predict2feature.forward``).

    Keep the ``top_m`` largest scores of each row (all when ``None``), take ``log`` clamped at
    -1,000 (a zero score gives -1,000), add 50, shift the kept values up so that the smallest is
    >= 0, scatter them back into a zero vector and L2-normalise the row.

    Args:
        scores: (N, K) released scores (probabilities, possibly rounded, zero outside a top-k).
        top_m: Entries kept per row (``None``: all K).

    Returns:
        (N, K) rows of unit norm, zero outside the kept entries, order-preserving within a row.

    Example:
        >>> x = adapter_input(torch.tensor([[0.7, 0.2, 0.1]]), top_m=2)
        >>> x.norm().item(), x[0, 2].item(), bool(x[0, 0] > x[0, 1] > 0)
        (1.0, 0.0, True)
    """
    k = scores.shape[1] if top_m is None else int(top_m)
    vals, idx = scores.float().topk(k, dim=1)
    vals = vals.clamp_min(0).log().clamp_min(-1000.0) + 50.0
    vals = vals + F.relu(-vals.min(dim=1, keepdim=True).values)
    out = torch.zeros_like(scores, dtype=torch.float32).scatter_(1, idx, vals)
    return F.normalize(out, p=2, dim=1)


class AdapterMLP(nn.Module):
    """C2FMI's adapter: :func:`adapter_input`, then ``K -> hidden -> hidden -> E`` (LeakyReLU 0.2,
    dropout 0.25 before the last layer), the official ``predict2feature``.

    Args:
        num_classes: K, the target's classes.
        embedding_classes: E, the embedding network's classes.
        hidden: Width of the two hidden layers (official 4,096).
        top_m: Scores kept by the input transform (``None``: all K).

    Example:
        >>> AdapterMLP(5, 3, hidden=8)(torch.softmax(torch.randn(2, 5), 1)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        num_classes: int,
        embedding_classes: int,
        *,
        hidden: int = 4096,
        top_m: int | None = None,
    ) -> None:
        super().__init__()
        self.top_m = top_m
        self.map = nn.Sequential(
            nn.Linear(num_classes, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.25),
            nn.Linear(hidden, embedding_classes),
        )

    def forward(self, scores: Tensor) -> Tensor:
        """(N, K) released scores -> (N, E) predicted embedding logits."""
        return self.map(adapter_input(scores, self.top_m))


def pseudo_prediction(labels: Tensor, num_classes: int, rng: torch.Generator | None) -> Tensor:
    """The coarse stage's pseudo output vectors: ``|N(0, I)|`` with 1e18 at the label, normalised.

    Args:
        labels: (N,) int64 class ids.
        num_classes: K.
        rng: CPU generator of the Gaussian draws.

    Returns:
        (N, K) float32 rows of unit L2 norm, about 1 at the label and about 1e-18 elsewhere.

    Example:
        >>> p = pseudo_prediction(torch.tensor([2]), 4, torch.Generator().manual_seed(0))
        >>> p.argmax().item(), round(p[0, 2].item(), 6)
        (2, 1.0)
    """
    p = torch.randn(labels.numel(), num_classes, generator=rng).abs()
    p[torch.arange(labels.numel()), labels.cpu()] = 1e18
    return F.normalize(p, p=2, dim=1)


def train_adapter(
    outputs: Tensor,
    targets: Tensor,
    *,
    hidden: int = 4096,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_step: int = 2,
    lr_gamma: float = 0.8,
    val_fraction: float = 1 / 16,
    top_m: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[AdapterMLP, dict[str, Any]]:
    """Regress the embedding logits from the released outputs (official ``utils/train_inv.py``).

    MSE between ``AdapterMLP(outputs)`` and ``targets``; Adam(``lr``), StepLR(``lr_step``,
    ``lr_gamma``) stepped per epoch; each epoch one pass over a seeded shuffle of the training
    rows in batches of ``batch_size`` (incomplete batches dropped, as officially, unless the
    training set is smaller than one batch). A seeded ``val_fraction`` of the rows (at least one
    when > 0) is held out and its loss (eval mode) reported after every epoch. Weights, dropout
    and orders follow ``seed``; the caller's random state is left as it was.

    Args:
        outputs: (M, K) released target outputs on public images.
        targets: (M, E) the embedding network's logits on the same images.
        hidden, top_m: :class:`AdapterMLP`'s.
        epochs, batch_size, lr, lr_step, lr_gamma: The official schedule (20, 128, 1e-3, 2, 0.8).
        val_fraction: Fraction of rows held out (official 10k of 160k = 1/16).
        seed: Seeds everything random.
        device: Where to train.

    Returns:
        The adapter (eval mode, frozen) and ``{"train_loss": [per epoch], "val_loss": [per
        epoch], "train_images": int, "val_images": int}``.

    Example:
        >>> ad, hist = train_adapter(torch.rand(40, 4), torch.randn(40, 3), hidden=8, epochs=2)
        >>> ad.training, len(hist["train_loss"]), hist["val_images"]
        (False, 2, 2)
    """
    if outputs.ndim != 2 or targets.ndim != 2 or outputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"outputs and targets must be (M, K) and (M, E) with the same M, got "
            f"{tuple(outputs.shape)} and {tuple(targets.shape)}"
        )
    device = torch.device(device)
    m = outputs.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(m, generator=gen)
    n_val = 0 if val_fraction == 0 else max(1, round(m * val_fraction))
    if n_val >= m:
        raise ValueError(f"adapter_val_fraction {val_fraction} leaves no training image of {m}")
    val_i, train_i = perm[:n_val], perm[n_val:]
    x_all = outputs.float().to(device)
    t_all = targets.float().to(device)
    forks = [device] if device.type == "cuda" else []
    history: dict[str, Any] = {"train_loss": [], "val_loss": []}
    with torch.random.fork_rng(devices=forks):
        torch.manual_seed(int(seed))
        adapter = AdapterMLP(outputs.shape[1], targets.shape[1], hidden=hidden, top_m=top_m).to(
            device
        )
        opt = torch.optim.Adam(adapter.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=lr_step, gamma=lr_gamma)
        n_train = len(train_i)
        bs = min(batch_size, n_train)
        for _ in range(epochs):
            adapter.train()
            order = train_i[torch.randperm(n_train, generator=gen)]
            total, steps = 0.0, 0
            for lo in range(0, n_train - bs + 1, bs):  # drop_last, as officially
                idx = order[lo : lo + bs].to(device)
                loss = F.mse_loss(adapter(x_all[idx]), t_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, steps = total + loss.item(), steps + 1
            sched.step()
            history["train_loss"].append(total / max(steps, 1))
            if n_val:
                adapter.eval()
                with torch.no_grad():
                    v = F.mse_loss(adapter(x_all[val_i.to(device)]), t_all[val_i.to(device)])
                history["val_loss"].append(v.item())
    adapter.eval().requires_grad_(False)
    history["train_images"], history["val_images"] = n_train, n_val
    return adapter, history


# ---------------------------------------------------------------------- the embedding (public)
@dataclass(frozen=True)
class Embedding:
    """What :data:`C2FMI_EMBEDDING` gives the attack.

    Attributes:
        net: The embedding classifier (eval mode, frozen): images in [0, 1] -> (N, E) logits.
        logits: (M, E) its logits on every public image, in the public set's order.
        fingerprint: :func:`~mibench_lib.cache.tensor_fingerprint` of the public images.
        classes: The public labels behind its E outputs, in order.
    """

    net: nn.Module
    logits: Tensor
    fingerprint: str
    classes: tuple[int, ...]


def _make_embedding_net(
    arch: str, num_classes: int, image_shape: tuple[int, int, int], arch_kwargs: Mapping[str, Any]
) -> nn.Module:
    from mibench_lib.models import MODELS

    if arch not in MODELS:
        raise ValueError(f"arch must be one of {sorted(MODELS)}, got {arch!r}")
    return MODELS[arch](num_classes, input_shape=image_shape, **dict(arch_kwargs))


def build_c2fmi_embedding(
    public: ImageSet,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    arch: str = "mnist_resnet",
    arch_kwargs: Mapping[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    test_fraction: float = 0.1,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train C2FMI's embedding network on the labelled public images (no target involved).

    A classifier of architecture ``arch`` (a key of :data:`mibench_lib.models.MODELS`; choose
    one unlike the target's) over the public data's own classes, trained with
    :func:`~mibench_lib.models.train_classifier` (Adam, cross-entropy) on a seeded
    ``1 - test_fraction`` of the labelled images; its logits on *every* public image, in order,
    are stored for the adapter (official: InceptionResNetV1 on CASIA-WebFace).

    Args:
        public: Public images with their own labels (unlabelled rows, -1, are not trained on).
        seed: Seeds the weights and the batch order.
        device: Where to train.
        progress: Show a progress bar.
        arch: Zoo architecture (``"mnist_resnet"`` works from 8 px up).
        arch_kwargs: Extra keyword arguments of its constructor (e.g. ``{"width": 8}``).
        epochs, batch_size, lr: Training loop settings.
        test_fraction: Labelled images held out for the reported test accuracy.

    Returns:
        ``(tensors, meta)``: ``"net.<key>"`` state tensors and ``"logits"`` (M, E), and metadata
        (architecture, classes, image shape, public fingerprint, accuracies, wall time).

    Raises:
        ValueError: no labelled public image (C2FMI needs a labelled public set), fewer than
            two public classes, an unknown ``arch`` or a bad setting.

    Example:
        >>> from mibench_lib.testing import build_public_prior, tiny_digits
        >>> x, y = tiny_digits()
        >>> emb = build_public_prior(C2FMI_EMBEDDING, x[:80], y[:80])
        >>> emb.logits.shape, emb.classes
        (torch.Size([80, 10]), (0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
    """
    from mibench_lib.models import predict_logits, train_classifier

    if not isinstance(public, ImageSet):
        raise TypeError(f"public must be an ImageSet, got {type(public).__name__}")
    labelled = public.labels >= 0
    if not labelled.any():
        raise ValueError(
            "C2FMI needs a labelled public set: its embedding network is a classifier of the "
            "public data's own classes (officially CASIA-WebFace identities), but every public "
            "label is -1"
        )
    classes = public.labels[labelled].unique().sort().values
    if classes.numel() < 2:
        raise ValueError(
            f"C2FMI's embedding network needs at least 2 public classes, got {classes.tolist()}"
        )
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    check_real("lr", lr, strict=True)
    if not (isinstance(test_fraction, numbers.Real) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    arch_kwargs = dict(arch_kwargs or {})
    image_shape = tuple(int(s) for s in public.image_shape)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _make_embedding_net(arch, classes.numel(), image_shape, arch_kwargs)  # type: ignore[arg-type]
    rows = torch.nonzero(labelled).flatten()
    rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
    n_test = max(1, round(len(rows) * test_fraction))
    remap = torch.full((int(classes.max()) + 1,), -1, dtype=torch.int64)
    remap[classes] = torch.arange(classes.numel())
    data = ImageSet(public.data, torch.where(labelled, remap[public.labels.clamp_min(0)], -1))
    test, train = data.subset(rows[:n_test]), data.subset(rows[n_test:])
    if len(train) == 0:
        raise ValueError(f"too few labelled public images ({len(rows)}) to train and test")
    net, report = train_classifier(
        net,
        train,
        test,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        rng=torch.Generator().manual_seed(seed),
        progress=progress,
        desc="C2FMI embedding",
    )
    logits = predict_logits(net, public, device=device)
    tensors = {
        **{f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()},
        "logits": logits.float().cpu(),
    }
    meta = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "classes": [int(c) for c in classes],
        "image_shape": list(image_shape),
        "fingerprint": tensor_fingerprint(public.data),
        "num_images": len(public),
        "test_acc": float(report.test_acc),
        "train_acc": float(report.train_acc),
        "epochs": int(epochs),
        "wall_time_s": time.perf_counter() - t0,
    }
    return tensors, meta


def load_c2fmi_embedding(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: Any
) -> Embedding:
    """Rebuild :func:`build_c2fmi_embedding`'s network (eval, frozen) and logits on ``device``."""
    classes = tuple(int(c) for c in meta["classes"])
    net = _make_embedding_net(
        str(meta["arch"]),
        len(classes),
        tuple(int(s) for s in meta["image_shape"]),  # type: ignore[arg-type]
        meta.get("arch_kwargs", {}),
    )
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    net.to(device).eval().requires_grad_(False)
    return Embedding(net, tensors["logits"].float(), str(meta["fingerprint"]), classes)


#: C2FMI's embedding network, trained on the labelled public images only (cached per public data).
C2FMI_EMBEDDING = PublicPrior(
    "c2fmi_embedding",
    build_c2fmi_embedding,
    load_c2fmi_embedding,
    quick={"arch_kwargs": {"width": 4}, "epochs": 1, "batch_size": 32},
)


# ---------------------------------------------------------------------- the adapter's data
@dataclass(frozen=True)
class AdapterData:
    """What :data:`C2FMI_ADAPTER` gives the attack: the target's released outputs on public images.

    Attributes:
        outputs: (M', K) released scores (:func:`~mibench_lib.attacks._query.released_scores`).
        index: (M',) rows of the public set they belong to (increasing).
        fingerprint: :func:`~mibench_lib.cache.tensor_fingerprint` of the public images.
        access: The access level the outputs were released at.
        top_k: The k of a ``"top-k"`` release, else ``None``.
    """

    outputs: Tensor
    index: Tensor
    fingerprint: str
    access: str
    top_k: int | None


def build_c2fmi_adapter(
    oracle: TargetOracle,
    public: ImageSet,
    *,
    num_classes: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    max_images: int | None = None,
    batch_size: int = 256,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Query the target once on each public image and store what it released.

    The adapter itself is trained at the start of :func:`c2fmi_attack` (a few seconds, no
    queries), so the stored data serve every adapter size. Behind an output defense the oracle is
    the defended one: the stored outputs are what the defense released (rounded scores, zeros
    outside a top-k, one-hot rows of a label release).

    Args:
        oracle: The target (access ``"probabilities"``, or whatever the deployment releases).
        public: The public images, in the same order as the embedding prior's (labels unused).
        num_classes: K, the target's classes.
        seed: Seeds the subset drawn when ``max_images`` < ``len(public)``.
        device: Unused (queries run on the oracle's device).
        progress: Unused (one pass of batched queries).
        max_images: Query only a seeded subset of this many images (``None``: all; official
            160,000).
        batch_size: Images per oracle call.

    Returns:
        ``(tensors, meta)``: ``"outputs"`` (M', K) and ``"index"`` (M',), and the public
        fingerprint, release level and query count.

    Example:
        >>> from mibench_lib.testing import build_target_prior, tiny_classifier, tiny_digits
        >>> data, queries = build_target_prior(C2FMI_ADAPTER, tiny_classifier(), tiny_digits()[0][:50])
        >>> data.outputs.shape, queries
        (torch.Size([50, 4]), 50)
    """
    del device, progress
    if not isinstance(public, ImageSet):
        raise TypeError(f"public must be an ImageSet, got {type(public).__name__}")
    if num_classes != oracle.num_classes:
        raise ValueError(
            f"num_classes must be the target's ({oracle.num_classes}), got {num_classes!r}"
        )
    if tuple(public.image_shape) != tuple(oracle.input_shape):
        raise ValueError(
            f"public images of shape {tuple(public.image_shape)} do not fit the target's input "
            f"shape {tuple(oracle.input_shape)}"
        )
    check_int("batch_size", batch_size)
    m = len(public)
    if max_images is None or max_images >= m:
        index = torch.arange(m)
    else:
        check_int("max_images", max_images)
        gen = torch.Generator().manual_seed(seed)
        index = torch.randperm(m, generator=gen)[:max_images].sort().values
    outs = []
    for lo in range(0, len(index), batch_size):
        images = public[index[lo : lo + batch_size]][0]
        outs.append(released_scores(oracle, images).float().cpu())
    outputs = torch.cat(outs)
    top_k = int(oracle.top_k) if oracle.access == "top-k" else None
    meta = {
        "fingerprint": tensor_fingerprint(public.data),
        "num_images": m,
        "access": oracle.access,
        "top_k": top_k,
        "num_classes": int(num_classes),
        "queries": len(index),
    }
    return {"outputs": outputs, "index": index}, meta


def load_c2fmi_adapter(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: Any
) -> AdapterData:
    """The stored released outputs (on the CPU: the attack trains the adapter where it runs)."""
    del device
    top_k = meta.get("top_k")
    return AdapterData(
        tensors["outputs"].float(),
        tensors["index"].long(),
        str(meta["fingerprint"]),
        str(meta["access"]),
        None if top_k is None else int(top_k),
    )


#: The target's released outputs on the public images, the adapter's training data.
C2FMI_ADAPTER = TargetPrior(
    "c2fmi_adapter", "probabilities", build_c2fmi_adapter, load_c2fmi_adapter
)


# ------------------------------------------------------------------------- the fine stage (DE)
def de_fitness(scores: Tensor, labels: Tensor, top_m: int | None = None) -> Tensor:
    """C2FMI's fitness of released scores: raw ``p_y``, or the top-M rule of the anti-defense run.

    With ``top_m = M``: ``p_y`` if ``y`` is among the row's ``M`` largest scores with a non-zero
    score, else ``-(sum of the M largest scores)`` (official ``DE_mask.cal_fitness``).

    Args:
        scores: (N, K) released scores.
        labels: (N,) int64 class ids.
        top_m: ``None`` for the plain ``p_y``.

    Returns:
        (N,) float32 fitness (higher is better).

    Example:
        >>> s = torch.tensor([[0.6, 0.3, 0.0, 0.0], [0.2, 0.7, 0.0, 0.0]])
        >>> de_fitness(s, torch.tensor([1, 3]), top_m=2).tolist()
        [0.30000001192092896, -0.8999999761581421]
    """
    scores = scores.float()
    labels = labels.to(scores.device)
    p_y = scores.gather(1, labels[:, None])[:, 0]
    if top_m is None:
        return p_y
    vals, idx = scores.topk(int(top_m), dim=1)
    shown = (idx == labels[:, None]).any(dim=1) & (p_y > 0)
    return torch.where(shown, p_y, -vals.sum(dim=1))


def de_select(pop: Tensor, trial: Tensor, f_par: Tensor, f_chi: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy replacement: each trial replaces its parent iff its raw fitness is strictly higher.

    Args:
        pop, trial: (..., P, D) parents and trials.
        f_par, f_chi: (..., P) their fitness.

    Returns:
        The new population and its fitness (the per-slot maximum).

    Example:
        >>> pop, f = de_select(torch.zeros(1, 2, 1), torch.ones(1, 2, 1),
        ...                    torch.tensor([[0.5, 0.9]]), torch.tensor([[0.6, 0.9]]))
        >>> pop.flatten().tolist(), f.tolist()
        ([1.0, 0.0], [[0.6000000238418579, 0.8999999761581421]])
    """
    better = f_par < f_chi
    return torch.where(better[..., None], trial, pop), torch.where(better, f_chi, f_par)


def _gather_rows(pop: Tensor, index: Tensor) -> Tensor:
    """``pop[n, index[n, ...]]`` for (N, P, D) ``pop`` and (N, ...) ``index`` -> (N, ..., D)."""
    n, _, d = pop.shape
    flat = index.reshape(n, -1)
    out = pop.gather(1, flat[..., None].expand(-1, -1, d))
    return out.reshape(*index.shape, d)


def _beta(g: int, generations: int, beta: float) -> float:
    """Official ``DE_c2b_5_bin2`` scale: ``beta``, then ``beta (G - g) / 50`` in the last 30."""
    return beta if g < generations - 30 else beta * (generations - g) / 50


# ---------------------------------------------------------------------------------- the attack
def _check_style_generator(generator: object) -> nn.Module:
    missing = [
        a for a in ("mapping", "synthesize_w", "z_dim", "w_dim") if not hasattr(generator, a)
    ]
    if not isinstance(generator, nn.Module) or missing:
        raise TypeError(
            "style_generator must be a style-based generator nn.Module with mapping(z), "
            f"synthesize_w(w), z_dim and w_dim (the 'style_generator' prior); "
            f"{type(generator).__name__} lacks {missing or 'nn.Module'}"
        )
    return generator


def _resolve_top_m(top_m: object, oracle: TargetOracle, data: AdapterData) -> int | None:
    k = oracle.num_classes
    if top_m == "auto":
        ms = []
        for access, top_k in ((oracle.access, oracle.top_k), (data.access, data.top_k)):
            if access == "top-k":
                ms.append(int(top_k))  # type: ignore[arg-type]
            elif access == "label":
                ms.append(1)
        m = min(ms) if ms else None
        return None if m is None or m >= k else m
    if top_m is None:
        return None
    if isinstance(top_m, bool) or not isinstance(top_m, numbers.Integral) or not 1 <= top_m <= k:
        raise ValueError(f"top_m must be None, 'auto' or an integer in [1, {k}], got {top_m!r}")
    return int(top_m)


def c2fmi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    style_generator: nn.Module,
    c2fmi_embedding: Embedding,
    c2fmi_adapter: AdapterData,
    adapter_hidden: int = 4096,
    adapter_epochs: int = 20,
    adapter_batch_size: int = 128,
    adapter_lr: float = 1e-3,
    adapter_val_fraction: float = 1 / 16,
    top_m: int | str | None = "auto",
    starts: int = 16,
    coarse_steps: int = 20,
    coarse_lr: float = 0.02,
    keep: int = 10,
    population: int = 32,
    generations: int = 500,
    best_weight: float = 0.02,
    pairs: int = 4,
    beta: float = 0.1,
    crossover: float = 0.5,
    final_rescore: bool = True,
    chunk: int | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` with C2FMI: adapter, coarse gradient stage on ``E``, fine black-box DE.

    See the module docstring for the algorithm and its relation to the official code.

    Args:
        oracle: The target at access ``"probabilities"`` (any release works: scores are read
            through :func:`~mibench_lib.attacks._query.released_scores`).
        labels: (N,) int64 class ids; repeats allowed (each entry is searched independently).
        style_generator: The public style-based generator (``mapping``, ``synthesize_w``,
            ``z_dim``, ``w_dim``; images in [0, 1]); run in eval mode, never updated.
        c2fmi_embedding: :data:`C2FMI_EMBEDDING` (network and its public logits).
        c2fmi_adapter: :data:`C2FMI_ADAPTER` (the target's released outputs on the same public
            images).
        adapter_hidden: Adapter width (official 4,096).
        adapter_epochs, adapter_batch_size, adapter_lr: Adapter training (official 20, 128, 1e-3;
            StepLR(2, 0.8) per epoch).
        adapter_val_fraction: Fraction of the adapter's images held out (official 1/16).
        top_m: ``None`` (official main run: all classes), an integer M (anti-defense run:
            official 100) or ``"auto"`` (from the release; see the module docstring).
        starts: Starting latents per entry (official 16).
        coarse_steps: Adam steps of the coarse stage (official 20; anti-defense 50).
        coarse_lr: Its learning rate (official 0.02; StepLR(20, 0.95) per step).
        keep: Starts kept for the evolution (official 10), at most ``starts`` and ``population``.
        population: DE population (official 32).
        generations: DE generations (official 500).
        best_weight: Weight of ``x_best - x_i`` in the mutant (official 0.02).
        pairs: Difference pairs per mutant (official 4).
        beta: Their scale (official 0.1, decayed in the last 30 generations).
        crossover: Probability that a coordinate comes from the mutant (official 0.5).
        final_rescore: Score the final population once more to pick the output (official).
        chunk: Most images generated and sent per oracle call (``None``: all at once).
        rng: CPU generator of every random draw (the adapter's seed included).
        on_step: ``on_step(step, coarse_steps + generations, info)`` after every coarse step
            (``"stage"`` 0, ``"loss"``) and every generation (``"stage"`` 1, ``"best_fitness"``
            and ``"mean_fitness"``: means over entries).

    Returns:
        InversionResult with one image per entry (the best member, at the target's input size),
        its ``w`` as latent, ``losses`` = the coarse stage's mean per-entry MSE at each step,
        ``queries`` = ``N (starts + 2 population generations_run + population [final])`` and
        ``extras``: ``"stopped_by_budget"``, ``"generations"`` (run), ``"target_prob"`` (N,)
        output fitness, ``"selected_fitness"`` (N, keep) (or (N, starts), -inf where unscored,
        after a truncated selection), ``"slot_fitness"``
        (generations, N, population) per-slot fitness after each generation, ``"top_m"``
        (-1 for all classes), ``"final_rescored"``, ``"adapter_train_loss"`` and
        ``"adapter_val_loss"`` (per epoch).

    Raises:
        ValueError: bad labels or settings (named), adapter data and embedding logits of
            different public images, or outputs of another K than the target's.
        TypeError: a generator without the style interface.

    Example:
        >>> from mibench_lib.testing import build_public_prior, build_target_prior
        >>> from mibench_lib.testing import tiny_classifier, tiny_digits, tiny_style_generator
        >>> x, y = tiny_digits()
        >>> target = tiny_classifier()
        >>> emb = build_public_prior(C2FMI_EMBEDDING, x[:80], y[:80])
        >>> data, _ = build_target_prior(C2FMI_ADAPTER, target, x[:80])
        >>> res = c2fmi_attack(TargetOracle(target, access="probabilities"), torch.tensor([0, 3]),
        ...                    style_generator=tiny_style_generator(), c2fmi_embedding=emb,
        ...                    c2fmi_adapter=data, adapter_hidden=16, adapter_epochs=1,
        ...                    coarse_steps=2, generations=3, rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.queries == 2 * (16 + 64 * 3 + 32)
        (torch.Size([2, 1, 8, 8]), True)
    """
    check_labels(labels, oracle.num_classes)
    generator = _check_style_generator(style_generator)
    for name, value in (("adapter_hidden", adapter_hidden), ("adapter_batch_size", adapter_batch_size),
                        ("starts", starts), ("keep", keep), ("population", population)):  # fmt: skip
        check_int(name, value)
    for name, value in (("adapter_epochs", adapter_epochs), ("coarse_steps", coarse_steps),
                        ("generations", generations), ("pairs", pairs)):  # fmt: skip
        check_int(name, value, 0)
    check_real("adapter_lr", adapter_lr, strict=True)
    check_real("coarse_lr", coarse_lr, strict=True)
    check_real("beta", beta)
    check_real("best_weight", best_weight, low=-math.inf, strict=True)
    if not (isinstance(crossover, numbers.Real) and 0 <= crossover <= 1):
        raise ValueError(f"crossover must lie in [0, 1], got {crossover!r}")
    if not (isinstance(adapter_val_fraction, numbers.Real) and 0 <= adapter_val_fraction < 1):
        raise ValueError(f"adapter_val_fraction must lie in [0, 1), got {adapter_val_fraction!r}")
    if keep > starts or keep > population:
        raise ValueError(
            f"keep must be at most starts ({starts}) and population ({population}), got {keep}"
        )
    if keep < population and keep < 3:
        raise ValueError(f"keep must be >= 3 to breed new members (population > keep), got {keep}")
    if chunk is not None:
        check_int("chunk", chunk)
    if not isinstance(c2fmi_embedding, Embedding) or not isinstance(c2fmi_adapter, AdapterData):
        raise TypeError(
            "c2fmi_embedding and c2fmi_adapter must be what the 'c2fmi_embedding' and "
            f"'c2fmi_adapter' priors load, got {type(c2fmi_embedding).__name__} and "
            f"{type(c2fmi_adapter).__name__}"
        )
    if c2fmi_embedding.fingerprint != c2fmi_adapter.fingerprint:
        raise ValueError(
            "c2fmi_adapter and c2fmi_embedding were built from different public images "
            f"(fingerprints {c2fmi_adapter.fingerprint} and {c2fmi_embedding.fingerprint}): the "
            "adapter regresses the embedding logits of the very images the target answered"
        )
    if c2fmi_adapter.outputs.shape[1] != oracle.num_classes:
        raise ValueError(
            f"c2fmi_adapter holds outputs over {c2fmi_adapter.outputs.shape[1]} classes, the "
            f"target has {oracle.num_classes}"
        )
    m_top = _resolve_top_m(top_m, oracle, c2fmi_adapter)
    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    n, k = labels.numel(), oracle.num_classes
    y = labels.to(device)
    shape = tuple(oracle.input_shape)
    total = coarse_steps + generations

    # adapter, trained from a seed drawn from rng (no queries)
    seed = int(torch.randint(2**62, (1,), generator=rng))
    adapter, history = train_adapter(
        c2fmi_adapter.outputs,
        c2fmi_embedding.logits[c2fmi_adapter.index],
        hidden=adapter_hidden,
        epochs=adapter_epochs,
        batch_size=adapter_batch_size,
        lr=adapter_lr,
        val_fraction=float(adapter_val_fraction),
        top_m=m_top,
        seed=seed,
        device=device,
    )
    embed = c2fmi_embedding.net

    def images_of(w: Tensor) -> Tensor:
        parts = [w] if chunk is None else list(w.split(chunk))
        out = torch.cat([generator.synthesize_w(p) for p in parts])
        if tuple(out.shape[1:]) != shape:
            if out.shape[1] != shape[0]:
                raise ValueError(
                    f"style_generator makes {out.shape[1]}-channel images, the target takes "
                    f"{shape[0]}"
                )
            out = F.interpolate(out, size=shape[1:], mode="bilinear", align_corners=False)
        return out

    def fitness(w: Tensor, y_rep: Tensor) -> Tensor:
        with torch.no_grad():
            scores = released_scores(oracle, images_of(w), chunk=chunk)
        return de_fitness(scores, y_rep, m_top)

    losses: list[float] = []
    stopped = False
    with eval_mode(generator, embed):
        # ---- coarse stage: starting points, then Adam on MSE(E(G(w)), A(pseudo)), no queries
        y_s = y.repeat_interleave(starts)
        with torch.no_grad():
            z = torch.randn(n * starts * 2, int(generator.z_dim), generator=rng).to(device)
            w0 = generator.mapping(z).reshape(n * starts, 2, -1).mean(dim=1)
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=coarse_lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.95)
        for step in range(coarse_steps):
            with torch.no_grad():
                goal = adapter(pseudo_prediction(y_s, k, rng).to(device))
            per = (embed(images_of(w)) - goal).pow(2).mean(dim=1).reshape(n, starts).mean(dim=1)
            (grad,) = torch.autograd.grad(per.sum(), [w])
            w.grad = grad
            opt.step()
            sched.step()
            losses.append(per.mean().item())
            if on_step is not None:
                on_step(step + 1, total, {"stage": 0.0, "loss": losses[-1]})
        w = w.detach()

        # ---- selection: one query per start, keep the best `keep` per entry
        n_sel = affordable(oracle, n * starts)
        f_start = torch.full((n * starts,), -math.inf, device=device)
        if n_sel:
            f_start[:n_sel] = fitness(w[:n_sel], y_s[:n_sel]).to(device)
        f_start = f_start.reshape(n, starts)
        w = w.reshape(n, starts, -1)
        if n_sel < n * starts:  # truncated selection: each entry's best scored start, no DE
            stopped = True
            best = f_start.argmax(dim=1)
            best_w = w[torch.arange(n), best]
            out_fit = f_start[torch.arange(n), best]
            selected = f_start
            slot_hist: list[Tensor] = []
            gens_run, rescored = 0, False
        else:
            selected, top = f_start.topk(keep, dim=1)
            pop = _gather_rows(w, top)  # (n, keep, D)
            fit = selected.clone()
            n_new = population - keep
            if n_new:
                trip = torch.rand(n, n_new, keep, generator=rng).argsort(dim=2)[..., :3].to(device)
                x1, x2, x3 = (_gather_rows(pop, trip[..., j]) for j in range(3))
                u = 0.5 * (0.5 * (x1 + x2) + x3)
                with torch.no_grad():
                    zr = torch.randn(n * n_new * 3, int(generator.z_dim), generator=rng)
                    w_r = generator.mapping(zr.to(device)).reshape(n, n_new, 3, -1).mean(dim=2)
                pop = torch.cat([pop, 0.7 * u + 0.3 * w_r], dim=1)
                fit = torch.cat([fit, torch.full((n, n_new), -math.inf, device=device)], dim=1)
            y_p = y.repeat_interleave(population)
            d = pop.shape[2]
            slot_hist = []
            gens_run = 0
            for g in range(generations):
                if affordable(oracle, 2 * n * population) < 2 * n * population:
                    stopped = True
                    break
                b = _beta(g, generations, beta)
                f_par = fitness(pop.reshape(-1, d), y_p).reshape(n, population)
                x_best = _gather_rows(pop, f_par.argmax(dim=1, keepdim=True))  # (n, 1, D)
                child = pop + best_weight * (x_best - pop)
                ab = torch.randint(population, (n, population, pairs, 2), generator=rng).to(device)
                for j in range(pairs):
                    child = child + b * (
                        _gather_rows(pop, ab[..., j, 0]) - _gather_rows(pop, ab[..., j, 1])
                    )
                mask = (torch.rand(n, population, d, generator=rng) > 1 - crossover).to(device)
                trial = torch.where(mask, child, pop)
                f_chi = fitness(trial.reshape(-1, d), y_p).reshape(n, population)
                pop, fit = de_select(pop, trial, f_par, f_chi)
                slot_hist.append(fit.cpu())
                gens_run += 1
                if on_step is not None:
                    on_step(
                        coarse_steps + g + 1,
                        total,
                        {
                            "stage": 1.0,
                            "best_fitness": fit.max(dim=1).values.mean().item(),
                            "mean_fitness": fit.mean().item(),
                        },
                    )
            rescored = False
            if final_rescore and affordable(oracle, n * population) == n * population:
                fit = fitness(pop.reshape(-1, d), y_p).reshape(n, population)
                rescored = True
            elif final_rescore:
                stopped = True
            best = fit.argmax(dim=1)
            best_w = pop[torch.arange(n), best]
            out_fit = fit[torch.arange(n), best]
        with torch.no_grad():
            images = images_of(best_w).clamp(0, 1)
    return InversionResult(
        attack="c2fmi",
        images=images.cpu(),
        labels=labels.cpu(),
        latents=best_w.cpu(),
        losses=losses,
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "stopped_by_budget": stopped,
            "generations": gens_run,
            "target_prob": out_fit.cpu(),
            "selected_fitness": selected.cpu(),
            "slot_fitness": torch.stack(slot_hist) if slot_hist else torch.zeros(0, n, population),
            "top_m": -1 if m_top is None else m_top,
            "final_rescored": rescored,
            "adapter_train_loss": history["train_loss"],
            "adapter_val_loss": history["val_loss"],
        },
    )


SPEC = AttackSpec(
    name="c2fmi",
    run=c2fmi_attack,
    access="probabilities",
    needs=(STYLE_GENERATOR, C2FMI_EMBEDDING, C2FMI_ADAPTER),
    quick={"adapter_hidden": 16, "adapter_epochs": 1, "coarse_steps": 2, "generations": 2},
)
