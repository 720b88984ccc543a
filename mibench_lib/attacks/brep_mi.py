"""Boundary-repelling model inversion (BREP-MI): Kahla, Chen, Just and Jia, "Label-Only Model
Inversion Attacks via Boundary Repulsion", CVPR 2022, https://arxiv.org/abs/2203.01925.

Algorithm. A label-only attacker sees only the target's predicted class. It walks in the latent
space of a public GAN, away from the decision boundary of the target class ``y``:

1. Start point: draw ``z ~ N(0, I)`` clamped to ``[-point_clamp, point_clamp]`` in batches and keep,
   for each label, a draw that the target already labels ``y``. The official code keeps drawing
   until every label has one; here the search gives up after ``max_init_batches`` batches
   (see ``missing_start``). Start points can also be given (``start_latents``); the target must
   label each one ``y``.
2. Each iteration, with the sphere radius ``R`` at its current value:
   a. step size ``min(R / 3, 3)``;
   b. ``sphere_points`` points ``z + R u_k`` with ``u_k`` uniform on the unit sphere (normalised
      Gaussian directions); score ``s_k = +1`` if the target labels ``G(z + R u_k)`` as ``y``,
      else ``-1``;
   c. if ``sum_k s_k > 0.75 * sphere_points`` (at least 29 of 32 inside), the radius grows,
      ``R <- expansion * R``;
   d. direction ``mean_k(w_k R u_k) / R`` with ``w_k = (s_k - 1) / 2`` (repulsion only: inside
      points weigh 0, outside points -1) or ``w_k = s_k``; the division uses the radius after c;
   e. candidate ``clamp(z + step * direction, -point_clamp, point_clamp)``; it is rejected
      (``z`` kept, a fresh sphere drawn next time) if the target does not label it ``y``;
   f. if the radius grew, the point is snapshotted.
3. A label stops after ``max_stale_iters`` iterations without a radius increase (or after
   ``max_iters``, or once its radius exceeds ``max_radius``). Its output is the snapshot from the
   last radius increase: the point that survived the largest sphere, not the last iterate.

Each iteration costs ``sphere_points + 1`` queries per running label; the start-point search costs
``init_batch`` per batch drawn.

Deviations from the official code (``brep_mi.py`` of the authors' repository), all deliberate:

- The official iteration counter advances only on accepted steps without a radius increase
  (a rejected step or a radius increase restarts the inner loop without counting). Here every
  iteration counts towards ``max_stale_iters`` and ``max_iters``, so a label whose steps keep being
  rejected still terminates. Without rejections and radius increases the two counts agree.
- At a radius increase whose step is rejected, the official snapshot (and its success flag) keeps
  the value of the previous increase; here the snapshot is the kept point, which the target also
  labels ``y``.
- The start-point search is capped at ``max_init_batches`` batches (the official loop runs
  until it succeeds, which never ends for a label the target never predicts); entries still
  without a start then raise or, with ``missing_start="random"``, are recorded as failures.
- All labels are attacked in one batch, each with its own radius, stale counter and stop flag;
  finished labels are never queried again. Repeated labels get distinct start points (the official
  code attacks each class once).
- The target's cross-entropy loss and the evaluator's verdict, which the official loop logs every
  iteration, are not computed: a label-only attacker has neither.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from mibench_lib._checks import check_labels, check_start_latents
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._query import affordable
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec
from mibench_lib.byo import check_generator
from mibench_lib.generators.base import Generator
from mibench_lib.oracle import TargetOracle

__all__ = ["brep_mi_attack"]


def _predicted_labels(
    oracle: TargetOracle, generator: Generator, z: Tensor, chunk: int | None = None
) -> Tensor:
    """Target labels of ``G(z)``: (M,) int64. Only the argmax of any released output is used.

    With ``chunk``, at most that many images are generated and sent per oracle call; each image
    is still one query, and in eval mode every image's label is independent of its batch.

    Raises:
        ValueError: the answer is neither (M,) labels nor (M, num_classes) scores (a target that
            breaks its contract; :func:`mibench_lib.byo.check_target` says how).
    """
    if chunk is not None and z.shape[0] > chunk:
        return torch.cat([_predicted_labels(oracle, generator, part) for part in z.split(chunk)])
    out = oracle(generator(z))
    m, k = z.shape[0], oracle.num_classes
    if tuple(out.shape) not in ((m,), (m, k)):
        raise ValueError(
            f"the oracle answered {m} images with shape {tuple(out.shape)}, neither ({m},) labels "
            f"nor ({m}, {k}) scores: the target must map (N, C, H, W) images to (N, num_classes) "
            "logits; check it with mibench_lib.byo.check_target(model)"
        )
    return out if out.ndim == 1 else out.argmax(dim=1)


def _occurrence_rank(values: Tensor) -> Tensor:
    """For each element, the number of earlier elements with the same value: (n,) int64.

    Sort-based, O(n log n) time and O(n) memory whatever the number of distinct values (a one-hot
    cumsum would need n x num_classes).

    Example:
        >>> _occurrence_rank(torch.tensor([4, 1, 4, 4, 1, 0])).tolist()
        [0, 0, 1, 2, 1, 0]
    """
    order = torch.sort(values, stable=True).indices
    ordered = values[order]
    first = torch.searchsorted(ordered, ordered)  # first sorted position of each value
    rank = torch.empty_like(values)
    rank[order] = torch.arange(values.numel(), device=values.device) - first
    return rank


def _initial_points(
    oracle: TargetOracle,
    generator: Generator,
    labels: Tensor,
    *,
    batch: int,
    max_batches: int,
    point_clamp: float,
    rng: torch.Generator | None,
    missing_start: str = "raise",
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, bool]:
    """One start latent per label entry that the target labels as that entry's label.

    Draws batches of clamped Gaussian latents; within a batch, the k-th draw labelled ``c`` goes to
    the k-th still-open entry with label ``c``, so repeated labels get distinct draws. Memory is
    O(entries + batch) per batch, independent of the number of classes.

    Returns:
        ``(start, found, stopped_by_budget)``: (N, latent_dim) latents and an (N,) bool mask of
        entries that got a start point, both on the CPU, and whether the oracle's budget ended
        the search. With ``missing_start="random"``, or when the budget cannot pay for the next
        batch, each entry without a hit gets its own fresh clamped Gaussian latent, drawn from
        ``rng`` after the search and never queried (the attack then leaves it where it is).

    Raises:
        ValueError: some labels got no hit in ``max_batches`` batches and ``missing_start`` is
            ``"raise"``; the message names them.
    """
    device = oracle.device
    labels = labels.cpu()  # bookkeeping on the CPU; only the latents travel to the device
    n, dim = labels.numel(), generator.latent_dim
    start = torch.zeros(n, dim)
    filled = torch.zeros(n, dtype=torch.bool)
    stopped = False
    for _ in range(max_batches):
        if affordable(oracle, batch) < batch:  # the budget cannot pay for another batch
            stopped = True
            break
        cand = torch.randn(batch, dim, generator=rng).clamp(-point_clamp, point_clamp)
        pred = _predicted_labels(oracle, generator, cand.to(device), chunk).cpu()
        # join open entries to draws on (label, occurrence rank); a draw's key is unique because
        # its rank is < batch
        cand_key = pred * batch + _occurrence_rank(pred)
        cand_key, cand_order = cand_key.sort()
        open_idx = (~filled).nonzero().squeeze(1)
        want = labels[open_idx]
        want_rank = _occurrence_rank(want)
        want_key = want * batch + want_rank
        pos = torch.searchsorted(cand_key, want_key).clamp(max=batch - 1)
        hit = (want_rank < batch) & (cand_key[pos] == want_key)
        start[open_idx[hit]] = cand[cand_order[pos[hit]]]
        filled[open_idx[hit]] = True
        if filled.all():
            return start, filled, False
    if missing_start == "random" or stopped:
        fresh = torch.randn(int((~filled).sum()), dim, generator=rng)
        start[~filled] = fresh.clamp(-point_clamp, point_clamp)
        return start, filled, stopped
    missing = sorted(set(labels[~filled].tolist()))
    raise ValueError(
        f"brep_mi_attack found no start point for labels {missing}: the target never predicted "
        f"them on {max_batches} batches of {batch} random latents (raise max_init_batches, "
        "or pass missing_start='random' to score them as failures)"
    )


def _given_points(start_latents: object, n: int, dim: int, point_clamp: float) -> Tensor:
    """User-given start points, checked (shape, dtype, inside the latent box) and copied to CPU."""
    start_latents = check_start_latents(
        start_latents,
        [(n, dim)],
        f"(N, latent_dim) = ({n}, {dim}), one start point per label entry",
    )
    lo, hi = float(start_latents.min()), float(start_latents.max())
    if lo < -point_clamp or hi > point_clamp:
        raise ValueError(
            f"start_latents must lie in [-point_clamp, point_clamp] = [{-point_clamp}, "
            f"{point_clamp}], where the attack keeps its iterates, got values in [{lo:.4g}, "
            f"{hi:.4g}]: clamp them (the target must still label them) or raise point_clamp"
        )
    return start_latents.detach().to("cpu", copy=True)


def _verified_points(
    oracle: TargetOracle,
    generator: Generator,
    start: Tensor,
    labels: Tensor,
    *,
    chunk: int | None,
) -> tuple[Tensor, Tensor]:
    """Given start points, once the target labels each ``G(start_i)`` as ``labels_i`` (N queries).

    Returns ``(start, found)`` as :func:`_initial_points` does (every entry found).

    Raises:
        ValueError: some start points are labelled otherwise; the message names them.
    """
    pred = _predicted_labels(oracle, generator, start.to(oracle.device), chunk).cpu()
    wrong = (pred != labels.cpu()).nonzero().squeeze(1)
    if wrong.numel():
        shown = wrong[:10].tolist()
        more = f" (and {wrong.numel() - 10} more)" if wrong.numel() > 10 else ""
        raise ValueError(
            f"start_latents must each be labelled by the target as their entry's label: entries "
            f"{shown}{more} with labels {labels.cpu()[wrong[:10]].tolist()} are labelled "
            f"{pred[wrong[:10]].tolist()}. Give start points the target labels y, or omit "
            "start_latents to let the attack search for them"
        )
    return start, torch.ones(labels.numel(), dtype=torch.bool)


def _sphere(
    z: Tensor, radius: Tensor, num_points: int, rng: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Points uniformly on the sphere of radius R_a around each z_a.

    Args:
        z: (A, d) centres. radius: (A,) radii.

    Returns:
        ``(points, offsets)``, both (A, num_points, d), with ``points = z + offsets`` and
        ``|offsets| = R`` row-wise.
    """
    gauss = torch.randn(z.shape[0], num_points, z.shape[1], generator=rng).to(z.device)
    offsets = gauss * (radius[:, None, None] / gauss.norm(dim=2, keepdim=True))
    return z[:, None, :] + offsets, offsets


def _iteration(
    oracle: TargetOracle,
    generator: Generator,
    z: Tensor,
    y: Tensor,
    radius: Tensor,
    *,
    sphere_points: int,
    expansion: float,
    point_clamp: float,
    repulsion_only: bool,
    rng: torch.Generator | None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One BREP-MI iteration for A running labels at once (``sphere_points + 1`` queries each).

    Args:
        z: (A, d) current points, each labelled ``y`` by the target. y: (A,) labels.
        radius: (A,) current sphere radii.
        chunk: At most this many images per generator/oracle call (None: one call each).

    Returns:
        ``(z, radius, grew, accepted, outside)``: the new points (old point where the step was
        rejected), the new radii, (A,) bool radius increased, (A,) bool step accepted, and (A,)
        fraction of sphere points outside the class.
    """
    a, dim = z.shape
    step = (radius / 3).clamp(max=3.0)
    points, offsets = _sphere(z, radius, sphere_points, rng)
    inside = _predicted_labels(oracle, generator, points.reshape(a * sphere_points, dim), chunk)
    inside = inside.view(a, sphere_points) == y[:, None]
    score = inside.to(z.dtype) * 2 - 1  # +1 inside class y, -1 outside
    grew = score.sum(dim=1) > 0.75 * sphere_points
    radius = torch.where(grew, radius * expansion, radius)
    weight = (score - 1) / 2 if repulsion_only else score
    direction = (weight[:, :, None] * offsets).mean(dim=1) / radius[:, None]
    candidate = (z + step[:, None] * direction).clamp(-point_clamp, point_clamp)
    accepted = _predicted_labels(oracle, generator, candidate, chunk) == y
    z = torch.where(accepted[:, None], candidate, z)
    return z, radius, grew, accepted, 1.0 - inside.to(z.dtype).mean(dim=1)


def brep_mi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    generator: Generator,
    sphere_points: int = 32,
    initial_radius: float = 2.0,
    expansion: float = 1.3,
    point_clamp: float = 1.5,
    max_stale_iters: int = 1000,
    max_radius: float | None = None,
    max_iters: int | None = None,
    init_batch: int = 256,
    max_init_batches: int = 100,
    repulsion_only: bool = True,
    missing_start: str = "raise",
    query_batch: int | None = 256,
    start_latents: Tensor | None = None,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` from predicted labels only, by repelling latents from the class boundary.

    Works at every access level: probabilities, top-k or logits are reduced to their argmax, and
    the target model itself is never touched, so a ``"label"`` oracle suffices.

    The generator is checked first against the contract of
    :func:`mibench_lib.byo.check_generator` (its images must be the target's input shape, in
    [0, 1]; one forward pass on a few latents, leaving every random state as it was). The target
    is out of reach at black-box access: check your own with
    :func:`mibench_lib.byo.check_target` before building its oracle (as
    :func:`mibench_lib.byo.as_target` does); an answer of the wrong shape is reported at the
    first query.

    Args:
        oracle: Oracle of the target at any access level.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (each gets its own start
            point and walk).
        generator: Public-data GAN generator on the oracle's device, (M, latent_dim) ->
            (M, C, H, W) in [0, 1], with a ``latent_dim`` attribute (see
            :func:`mibench_lib.byo.as_generator`). Run in eval mode without gradients, never
            updated.
        sphere_points: Points per sphere (official 32).
        initial_radius: Starting sphere radius (official 2).
        expansion: Radius growth factor (official 1.3).
        point_clamp: Start points and iterates are clamped to ``[-point_clamp, point_clamp]``
            (official 1.5); sphere points are not.
        max_stale_iters: A label stops after this many iterations without a radius increase
            (official 1000).
        max_radius: Stop a label once its sphere radius exceeds this (None: never, as in the
            official code). Sphere points are not clamped, so on targets with few classes the
            class region can contain spheres far larger than the latent box (side
            ``2 * point_clamp``) and the radius then grows without end; a radius beyond the box's
            diameter ``2 * point_clamp * sqrt(latent_dim)`` no longer probes the generator's range.
        max_iters: Optional cap on iterations per label (``None``: no cap). A target that keeps
            at least 29/32 sphere points inside at every radius is only stopped by this cap.
        init_batch: Latents drawn per start-point batch (official 256).
        max_init_batches: Start-point batches tried before giving up.
        repulsion_only: Official ``True``: only outside points push. ``False`` also lets inside
            points pull.
        missing_start: What to do when the target never predicts some label on the
            ``max_init_batches`` start-point batches. The official code has no cap: it draws
            batches until every label has a start point, however long that takes. ``"raise"``
            stops with a ValueError naming the labels; ``"random"`` gives each such entry its own
            fresh clamped Gaussian latent (drawn from ``rng`` after the search, never queried),
            does not attack it (no further queries) and marks it ``False`` in
            ``extras["found_start"]``, so a study scores it as the failure it is. Only for the
            search: given ``start_latents`` must all be labelled right.
        query_batch: At most this many images are generated and sent to the oracle per call
            (start-point batches, sphere points of all running labels, the final images); None
            sends each batch whole. Only memory and speed change: the queries and their count
            are the same, and in eval mode each image's answer does not depend on its batch (up
            to floating-point rounding of batched kernels). A CelebA run of 5000 entries asks for
            160,000 sphere images per iteration, more than a GPU holds at once through a VGG16.
            The default 256 is the measured CPU optimum
            (``benchmarks/bench_query_attacks.py --chunks``, ``benchmarks/results/brep_chunks.json``):
            on the embedded default (32 px DCGAN of width 8, ``mnist_cnn``, 25 entries x 33
            queries per iteration, one thread), chunks of 200-400 were the fastest, the whole
            800-image sphere (the former default) 20-35% slower (107 against 130 ms per
            iteration on a quiet machine; the generator's activations no longer fit the cache)
            and chunks of 32 slower still; two threads agree. Generator and target take about
            90% of an iteration, the oracle's copies and checks, sphere draw and label compare
            about 1%. On a GPU, larger chunks (thousands) keep it busier.
        start_latents: (N, latent_dim) start points instead of the search, one per label entry,
            inside ``[-point_clamp, point_clamp]``, float32 (torch's default dtype), on any
            device; copied, never modified. The target must label each ``G(start_latents[i])``
            as ``labels[i]``: the attack checks this with one query per entry (these N queries
            are its ``init_queries``, in place of the search's) and raises a ValueError naming
            the entries it labels otherwise. ``None`` (default): the search above, from ``rng``.
        rng: CPU generator for start points and sphere directions (moved to the oracle's device);
            only the sphere directions when ``start_latents`` is given.
        on_step: Progress hook ``on_step(iteration, max_iters or 0, info)``, called every 10
            iterations and at the last one, with the number of running labels, their mean radius
            and the mean fraction of sphere points outside the class.

    Returns:
        InversionResult with images (N, C, H, W) on the CPU in [0, 1] (``G`` of the snapshot at
        each label's last radius increase, or of its start point if the radius never grew), the
        labels, those latents, ``losses`` (per iteration, the mean fraction of sphere points
        outside the class over running labels: a label-only stand-in for a loss), ``queries``
        (``init_batch`` per start batch plus ``sphere_points + 1`` per running label per
        iteration) and ``extras``:

        - ``"radius"``: (N,) final sphere radius;
        - ``"iterations"``: (N,) iterations each label ran;
        - ``"start_latents"``: (N, latent_dim) start points (found or given);
        - ``"last_latents"``: (N, latent_dim) last iterates (not the output);
        - ``"init_queries"``: queries spent on the start-point search (or, with
          ``start_latents``, on checking their labels: N);
        - ``"found_start"``: (N,) bool, False for entries that got no start point (only with
          ``missing_start="random"`` or a budget stop; they are never attacked and keep
          ``iterations`` 0);
        - ``"stopped_by_budget"``: whether the oracle's budget ended the run. The attack checks
          the budget before every start-point batch and every iteration and stops cleanly when
          it cannot pay for the next one: entries still without a start point get a fresh random
          latent (as with ``missing_start="random"``), running labels keep their last snapshot.

    Raises:
        ValueError: bad labels or parameters, no start point found for some labels (named), given
            ``start_latents`` of the wrong shape or dtype, outside the latent box or labelled
            otherwise by the target (named), a generator that breaks its contract
            (:func:`mibench_lib.byo.check_generator`), or oracle answers of the wrong shape.
        TypeError: a generator without ``latent_dim``.
        QueryBudgetExceeded: the budget cannot pay for checking given ``start_latents`` (N
            queries); the search itself stops cleanly instead (``stopped_by_budget``).

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import tiny_classifier, tiny_generator
        >>> oracle = TargetOracle(tiny_classifier(), access="label")
        >>> res = brep_mi_attack(oracle, torch.tensor([3]), generator=tiny_generator(),
        ...                      max_iters=3, rng=torch.Generator().manual_seed(0))
        >>> res.queries == res.extras["init_queries"] + 3 * 33
        True
    """
    check_labels(labels, oracle.num_classes)
    if sphere_points < 1:
        raise ValueError(f"sphere_points must be >= 1, got {sphere_points}")
    if initial_radius <= 0:
        raise ValueError(f"initial_radius must be positive, got {initial_radius}")
    if expansion <= 1:
        raise ValueError(f"expansion must be > 1, got {expansion}")
    if point_clamp <= 0:
        raise ValueError(f"point_clamp must be positive, got {point_clamp}")
    if max_radius is not None and max_radius <= initial_radius:
        raise ValueError(
            f"max_radius must exceed initial_radius {initial_radius}, got {max_radius}"
        )
    if max_stale_iters < 1:
        raise ValueError(f"max_stale_iters must be >= 1, got {max_stale_iters}")
    if max_iters is not None and max_iters < 0:
        raise ValueError(f"max_iters must be >= 0 or None, got {max_iters}")
    if missing_start not in ("raise", "random"):
        raise ValueError(f"missing_start must be 'raise' or 'random', got {missing_start!r}")
    if query_batch is not None and query_batch < 1:
        raise ValueError(f"query_batch must be >= 1 or None, got {query_batch}")
    if init_batch < 1 or max_init_batches < 1:
        raise ValueError(
            f"init_batch and max_init_batches must be >= 1, got {init_batch} and {max_init_batches}"
        )
    # The generator against its contract before any work (no queries, no random draws used).
    check_generator(generator, image_shape=oracle.input_shape)
    n = labels.numel()
    given = (
        None
        if start_latents is None
        else _given_points(start_latents, n, generator.latent_dim, point_clamp)
    )

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    y = labels.to(device)
    losses: list[float] = []

    with eval_mode(generator), torch.no_grad():
        if given is None:
            start, found, stopped = _initial_points(
                oracle,
                generator,
                labels,
                batch=init_batch,
                max_batches=max_init_batches,
                point_clamp=point_clamp,
                rng=rng,
                missing_start=missing_start,
                chunk=query_batch,
            )
        else:
            start, found = _verified_points(oracle, generator, given, labels, chunk=query_batch)
            stopped = False
        init_queries = oracle.queries - start_queries
        z = start.to(device, copy=True)
        snapshot = z.clone()
        radius = torch.full((n,), float(initial_radius), dtype=z.dtype, device=device)
        stale = torch.zeros(n, dtype=torch.long, device=device)
        iters = torch.zeros(n, dtype=torch.long, device=device)
        active = found.to(device).clone()
        if max_iters == 0:
            active.zero_()

        iteration = 0
        while active.any():
            idx = active.nonzero().squeeze(1)
            if affordable(oracle, idx.numel() * (sphere_points + 1)) < idx.numel() * (
                sphere_points + 1
            ):  # the budget cannot pay for another iteration of every running label
                stopped = True
                break
            z_a, r_a, grew, _, outside = _iteration(
                oracle,
                generator,
                z[idx],
                y[idx],
                radius[idx],
                sphere_points=sphere_points,
                expansion=expansion,
                point_clamp=point_clamp,
                repulsion_only=repulsion_only,
                rng=rng,
                chunk=query_batch,
            )
            z[idx], radius[idx] = z_a, r_a
            snapshot[idx[grew]] = z_a[grew]
            stale[idx] = torch.where(grew, 0, stale[idx] + 1)
            iters[idx] += 1
            done = stale[idx] >= max_stale_iters
            if max_radius is not None:
                done |= r_a > max_radius
            if max_iters is not None:
                done |= iters[idx] >= max_iters
            active[idx[done]] = False

            iteration += 1
            losses.append(float(outside.mean()))
            if on_step is not None and (iteration % 10 == 0 or not active.any()):
                on_step(
                    iteration,
                    max_iters or 0,
                    {
                        "loss": losses[-1],
                        "active": float(idx.numel()),
                        "mean_radius": float(r_a.mean()),
                    },
                )

        parts = snapshot.split(query_batch) if query_batch is not None else (snapshot,)
        images = torch.cat([generator(part) for part in parts])

    return InversionResult(
        attack="brep_mi",
        images=images.cpu(),
        labels=labels.cpu(),
        latents=snapshot.cpu(),
        losses=losses,
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "radius": radius.cpu(),
            "iterations": iters.cpu(),
            "start_latents": start,
            "last_latents": z.cpu(),
            "init_queries": init_queries,
            "found_start": found,
            "stopped_by_budget": stopped,
        },
    )


#: What the study engine needs to know: access level and public artifacts.
SPEC = AttackSpec(
    "brep_mi",
    brep_mi_attack,
    access="label",
    needs=("generator",),
    quick={"max_iters": 3, "init_batch": 32, "sphere_points": 8},
)
