"""Mirror, black-box: An, Tao, Xu, Liu, Shen, Yao, Xu and Zhang, "MIRROR: Model Inversion for Deep
Learning Network with High Fidelity", NDSS 2022, https://doi.org/10.14722/ndss.2022.24335.

Algorithm. A genetic algorithm searches the w space of a public style-based generator ``G``
(one w broadcast to every synthesis layer), scoring candidates by the target's released
probability of the requested class only.

1. **Pool.** ``pool_size`` latents ``w = mapping(z, truncation_psi=truncation)`` with
   ``z ~ N(0, I)`` are drawn and their images queried **once for all label entries** (the pool is
   shared, so its queries count once whatever the number of labels).
2. **p space and box.** ``p = LeakyReLU(1 / s)(w)`` undoes the mapping network's last
   ``LeakyReLU(s)`` (``s = G.mapping_slope``, 0.2), so that p is roughly Gaussian. From the pool,
   ``mean_p`` and the population standard deviation ``sigma_p`` per coordinate give the box
   ``mean_p +- p_std_ce * sigma_p``, mapped back to w; every child is clipped into it.
3. **Initial population** of each entry with label ``y``: the ``population`` pool latents with the
   largest fitness ``log p_y`` (released probabilities; ``log(0)`` clamped to ``log(1e-30)``).
4. **Generation**, for every entry still running, all entries in one batch:
   a. the ``elites`` fittest latents are kept with their known fitness (never re-queried);
   b. ``population - elites`` children: two parents drawn with replacement, each with weight
      ``softmax(fitness) ∝ p_y``; uniform crossover per coordinate, taking parent 1's coordinate
      with probability ``q``;
   c. mutation: each coordinate with probability ``mutation_prob`` gets p-space noise
      ``U(-sigma_p, sigma_p) * mutation_ce``; back to w, clipped into the box;
   d. the children are queried (``population - elites`` queries per running entry) and the
      population sorted by fitness.
5. An entry stops once its elite reaches ``p_y >= stop_confidence`` (checked on the initial
   population too) and is never queried again; all stop after ``generations`` generations. The
   output is each entry's elite: one image per label entry.

Queries: ``pool_size + (population - elites) * sum_i generations_i``, with ``generations_i``
(``extras["generations"]``) the generations entry ``i`` ran. Query budget: a pool the budget cannot
pay is truncated to what it can (the population then comes from the scored part, at most that
many latents) and the search ends there; a generation the budget cannot pay for every running
entry is not started. Either way ``extras["stopped_by_budget"]`` is True and the elites so far are
returned.

Relation to the official code (njuaplusplus/mirror: ``my_ge_blackbox_attack.py``
``VectorizedPopulation``, ``init_population``, ``genetic_algorithm``; ``my_sample_z_w_space.py``;
``scripts/run_*_ge.sh``). Defaults are the official ones, with the population of the scripts
(1,000; the argparse default is 100). Deliberate differences:

- **Crossover weight.** Officially ``q = f1 / (f1 + f2)`` on the log-probability fitness. Both are
  negative, so the *worse* parent wins the coordinate more often (``f1 = -0.1``, ``f2 = -2`` gives
  ``q = 0.048``). Here ``q = p1 / (p1 + p2) = sigmoid(f1 - f2)`` favours the better parent, as the
  paper intends; ``official_crossover=True`` restores the official formula (with ``q = 1/2``
  where ``f1 + f2 = 0``, officially a 0/0).
- **Mutation noise.** Officially one noise vector of shape (1, w_dim) is drawn per generation and
  shared by every child (only the mutation mask differs). Here each child coordinate draws its
  own noise; ``shared_noise=True`` restores one vector per entry and generation.
- **Elite fitness.** The official loop re-queries the whole population, elite included, every
  generation; here the elite keeps its known fitness, so a generation costs
  ``population - elites`` queries per entry. Without output noise the values are the same.
- **Truncation.** The official pool truncates w with psi 0.7 on the first 8 of 14 layers only;
  with one w broadcast to all layers here, the pool's w is truncated as a whole (the search is
  in that single w, as officially).
- **Batching.** All label entries are searched in one batch, each with its own population and
  stop flag (officially one run per class); repeated labels start from the same top-K but evolve
  with their own random draws. The pool is drawn in fixed blocks of ``_POOL_BLOCK`` latents, so
  the result does not depend on ``query_batch``.
- **Randomness.** Official parent draws use Python's ``random``; here every draw (pool, parents,
  crossover and mutation masks, noise) comes from ``rng``, in that order, on the CPU.
- p-space arithmetic is done in float64, so ``w -> p -> w`` is exact and unmutated
  coordinates are carried bit for bit.
- With ``elites=1`` the official ``find_elite`` is reproduced exactly; ``elites > 1`` keeps more.

Cost. Nearly all the time goes into synthesising the queried images (the genetic operators are
a few element-wise passes over the (entries, population, w_dim) tensor). Memory: the pool's w
(``pool_size x w_dim``: 200 MB at the official 100,000 x 512) while the population is selected,
then the populations (``N x population x w_dim``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib._checks import check_labels
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._query import affordable, released_scores
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec
from mibench_lib.attacks._style_prior import STYLE_GENERATOR
from mibench_lib.oracle import TargetOracle

__all__ = ["mirror_attack"]

#: Latents drawn per random call when building the pool (fixed, so ``query_batch`` only chunks).
_POOL_BLOCK = 1000
#: Released probabilities are clamped to this before the log (a top-k or label release has zeros).
_MIN_PROB = 1e-30


def _to_p(w: Tensor, slope: float) -> Tensor:
    """w -> p = LeakyReLU(1 / slope)(w), in float64 (so that :func:`_to_w` inverts it exactly).

    Example:
        >>> w = torch.tensor([-1.0, 0.0, 2.0])
        >>> _to_p(w, 0.2).tolist()
        [-5.0, 0.0, 2.0]
        >>> torch.equal(_to_w(_to_p(w, 0.2), 0.2, w.dtype), w)
        True
    """
    w = w.double()
    return torch.where(w < 0, w / slope, w)


def _to_w(p: Tensor, slope: float, dtype: torch.dtype) -> Tensor:
    """p -> w = LeakyReLU(slope)(p), cast to ``dtype``."""
    return torch.where(p < 0, p * slope, p).to(dtype)


class _Box:
    """The p-space box ``mean_p +- p_std_ce * sigma_p`` of a pool, as bounds in w.

    Accumulates the pool's p sums in float64 block by block; :meth:`close` fixes the bounds.
    """

    def __init__(self, w_dim: int, slope: float, device: torch.device) -> None:
        self.slope = slope
        self.count = 0
        self.total = torch.zeros(w_dim, dtype=torch.float64, device=device)
        self.total_sq = torch.zeros(w_dim, dtype=torch.float64, device=device)

    def add(self, w: Tensor) -> None:
        p = _to_p(w, self.slope)
        self.count += p.shape[0]
        self.total += p.sum(0)
        self.total_sq += (p * p).sum(0)

    def close(self, p_std_ce: float, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``(w_min, w_max, sigma_p)``: (w_dim,) bounds in ``dtype`` and the float64 p std."""
        mean = self.total / max(self.count, 1)
        var = (self.total_sq / max(self.count, 1) - mean * mean).clamp_min(0)
        std = var.sqrt()  # population std (unbiased=False), as officially
        w_min = _to_w(mean - p_std_ce * std, self.slope, dtype)
        w_max = _to_w(mean + p_std_ce * std, self.slope, dtype)
        return w_min, w_max, std


def _chunks(x: Tensor, chunk: int | None) -> tuple[Tensor, ...]:
    return (x,) if chunk is None else x.split(chunk)


def _log_scores(
    oracle: TargetOracle, generator: Any, w: Tensor, chunk: int | None
) -> Iterator[Tensor]:
    """For each chunk of ``w``: (m, K) log released scores of ``synthesize_w`` (log 0 clamped)."""
    for part in _chunks(w, chunk):
        scores = released_scores(oracle, generator.synthesize_w(part))
        yield scores.clamp_min(_MIN_PROB).log()


def _fitness(
    oracle: TargetOracle, generator: Any, w: Tensor, y: Tensor, chunk: int | None
) -> Tensor:
    """(M,) ``log p_y`` of ``G(w_i)`` with ``y_i`` the row's label: one query per row, on the CPU."""
    out = [
        s.gather(1, part[:, None]).squeeze(1).cpu()
        for s, part in zip(_log_scores(oracle, generator, w, chunk), _chunks(y, chunk), strict=True)
    ]
    return torch.cat(out) if out else torch.zeros(0)


def _top_k_merge(
    best: Tensor, best_idx: Tensor, scores: Tensor, offset: int, k: int
) -> tuple[Tensor, Tensor]:
    """Merge a block's (U, m) scores (pool indices ``offset + j``) into the running (U, k') top-k.

    Ties go to the lower pool index, so the population does not depend on the device.

    Example:
        >>> best, idx = torch.zeros(1, 0), torch.zeros(1, 0, dtype=torch.long)
        >>> best, idx = _top_k_merge(best, idx, torch.tensor([[0.1, 0.5, 0.3]]), 0, 2)
        >>> best, idx = _top_k_merge(best, idx, torch.tensor([[0.4, 0.0]]), 3, 2)
        >>> idx.tolist(), best.tolist()
        ([[1, 3]], [[0.5, 0.4000000059604645]])
    """
    cand = torch.cat([best, scores], dim=1)
    cand_idx = torch.cat(
        [best_idx, torch.arange(offset, offset + scores.shape[1]).expand(scores.shape[0], -1)],
        dim=1,
    )
    # a stable sort: among equal fitness (a label release has many) the earlier latent wins
    top, pos = cand.sort(dim=1, descending=True, stable=True)
    return top[:, :k], cand_idx.gather(1, pos[:, :k])


def _pool_blocks(
    generator: Any, n: int, truncation: float, device: torch.device, rng: torch.Generator | None
) -> Iterator[Tensor]:
    """The pool's w, ``_POOL_BLOCK`` latents at a time: ``mapping(z, truncation_psi)``, z ~ N(0, I)."""
    for start in range(0, n, _POOL_BLOCK):
        z = torch.randn(min(_POOL_BLOCK, n - start), generator.z_dim, generator=rng)
        yield generator.mapping(z.to(device), truncation_psi=truncation)


def _initial_population(
    blocks: Iterator[Tensor],
    score: Callable[[Tensor], Tensor],
    classes: Tensor,
    population: int,
    box: _Box,
) -> tuple[Tensor, Tensor]:
    """Top-``population`` pool latents per class by fitness, and the pool's box statistics.

    Args:
        blocks: The pool's w, block by block (each block is scored once for every class).
        score: (m, w_dim) w -> (m, U) fitness for ``classes`` (U distinct class ids), on the CPU.
        classes: (U,) distinct class ids (only their count is used here).
        population: Latents kept per class (fewer if the pool is smaller).
        box: Accumulates the p statistics of every scored block.

    Returns:
        ``(pop, fit)``: (U, k, w_dim) latents on the blocks' device and (U, k) fitness on the CPU,
        sorted by decreasing fitness, ``k = min(population, pool)``.
    """
    u = classes.numel()
    best = torch.zeros(u, 0)
    best_idx = torch.zeros(u, 0, dtype=torch.long)
    kept: list[Tensor] = []
    offset = 0
    for w in blocks:
        box.add(w)
        best, best_idx = _top_k_merge(best, best_idx, score(w).T, offset, population)
        kept.append(w)  # the pool's w (pool_size x w_dim); only the selected rows are used
        offset += w.shape[0]
    pool = torch.cat(kept)
    return pool[best_idx.to(pool.device)], best


def _mutate(
    children: Tensor,
    p_std: Tensor,
    *,
    slope: float,
    mutation_prob: float,
    mutation_ce: float,
    shared_noise: bool,
    rng: torch.Generator | None,
) -> Tensor:
    """Mutation in p space, before clipping: (A, C, D) children -> (A, C, D).

    Each coordinate is mutated with probability ``mutation_prob`` by ``mutation_ce * U(-sigma_p,
    sigma_p)`` (``p_std`` = sigma_p, (D,)); with ``shared_noise`` one noise vector per entry (row
    ``A``) is shared by all its children (the official quirk). Coordinates not mutated come back
    bit for bit.
    """
    a, c, d = children.shape
    mask = torch.rand(a, c, d, generator=rng).to(children.device) < mutation_prob
    u = torch.rand(a, 1 if shared_noise else c, d, generator=rng, dtype=torch.float64)
    noise = (2 * u.to(children.device) - 1) * p_std * mutation_ce
    p = _to_p(children, slope)
    return _to_w(torch.where(mask, p + noise, p), slope, children.dtype)


def _crossover_weight(f1: Tensor, f2: Tensor, *, official: bool) -> Tensor:
    """Probability that a child takes parent 1's coordinate, from the parents' log p_y (float64).

    ``p1 / (p1 + p2) = sigmoid(f1 - f2)``, or officially ``f1 / (f1 + f2)`` (1/2 where the sum
    is 0), which favours the worse parent:

    Example:
        >>> f1, f2 = torch.tensor([-0.1]), torch.tensor([-2.0])
        >>> round(float(_crossover_weight(f1, f2, official=False)), 3)
        0.87
        >>> round(float(_crossover_weight(f1, f2, official=True)), 3)
        0.048
    """
    f1, f2 = f1.double(), f2.double()
    if official:
        den = f1 + f2
        return torch.where(den == 0, 0.5, f1 / torch.where(den == 0, 1.0, den))
    return torch.sigmoid(f1 - f2)


def _offspring(
    pop: Tensor,
    fit: Tensor,
    *,
    elites: int,
    box: tuple[Tensor, Tensor, Tensor],
    slope: float,
    mutation_prob: float,
    mutation_ce: float,
    official_crossover: bool,
    shared_noise: bool,
    rng: torch.Generator | None,
) -> Tensor:
    """``population - elites`` children per entry: selection, crossover, mutation, clipping.

    Args:
        pop: (A, P, D) latents of A entries. fit: (A, P) their fitness (log p_y) on the CPU.
        box: ``(w_min, w_max, sigma_p)`` of the pool.

    Returns:
        (A, P - elites, D) children inside the box.
    """
    a, size, d = pop.shape
    c = size - elites
    # parents with replacement, weights softmax(fitness) = p_y / sum p_y
    parents = torch.multinomial(F.softmax(fit.double(), dim=1), 2 * c, True, generator=rng)
    i1, i2 = parents[:, :c], parents[:, c:]
    q = _crossover_weight(fit.gather(1, i1), fit.gather(1, i2), official=official_crossover)
    take1 = torch.rand(a, c, d, generator=rng, dtype=torch.float64) < q[:, :, None]
    rows = torch.arange(a, device=pop.device)[:, None]
    p1, p2 = pop[rows, i1.to(pop.device)], pop[rows, i2.to(pop.device)]
    children = torch.where(take1.to(pop.device), p1, p2)
    w_min, w_max, p_std = box
    children = _mutate(
        children,
        p_std,
        slope=slope,
        mutation_prob=mutation_prob,
        mutation_ce=mutation_ce,
        shared_noise=shared_noise,
        rng=rng,
    )
    return torch.maximum(torch.minimum(children, w_max), w_min)


def _check_style_generator(generator: Any, input_shape: tuple[int, ...]) -> None:
    """TypeError/ValueError unless ``generator`` has the style-generator interface and shape."""
    missing = [
        a
        for a in ("z_dim", "w_dim", "mapping_slope", "w_avg", "mapping", "synthesize_w")
        if not hasattr(generator, a)
    ]
    if missing:
        raise TypeError(
            f"style_generator must be a style-based generator with z_dim, w_dim, mapping_slope, "
            f"w_avg, mapping(z, truncation_psi) and synthesize_w(w); missing {missing}"
        )
    if not 0 < float(generator.mapping_slope) < 1:
        raise ValueError(
            f"style_generator.mapping_slope must lie in (0, 1), got {generator.mapping_slope}"
        )
    with torch.no_grad():
        img = generator.synthesize_w(generator.w_avg.reshape(1, -1))
    if tuple(img.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"style_generator makes {tuple(img.shape[1:])} images, the target takes "
            f"{tuple(input_shape)}"
        )


def mirror_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    style_generator: Any,
    population: int = 1000,
    pool_size: int = 100_000,
    generations: int = 100,
    stop_confidence: float | None = 0.95,
    mutation_prob: float = 0.1,
    mutation_ce: float = 0.1,
    p_std_ce: float = 1.0,
    truncation: float = 0.7,
    elites: int = 1,
    official_crossover: bool = False,
    shared_noise: bool = False,
    query_batch: int | None = 256,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` from released probabilities by a genetic search in a style generator's w.

    Args:
        oracle: Oracle of the target; ``"probabilities"`` suffices. Behind a weaker release the
            fitness is read from what is released (:func:`~mibench_lib.attacks._query.released_scores`):
            zeros outside a top-k, one-hot rows for labels.
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (each entry evolves its own
            population).
        style_generator: Public style-based generator on the oracle's device (``z_dim``,
            ``w_dim``, ``mapping_slope``, ``w_avg``, ``mapping(z, truncation_psi)``,
            ``synthesize_w(w)`` -> images in [0, 1] of the target's input shape). Run in eval
            mode without gradients, never updated.
        population: Latents per entry (official scripts 1,000).
        pool_size: Latents in the shared initial pool (official 100,000); >= ``population``.
        generations: Maximum generations (official 100).
        stop_confidence: An entry stops once its elite's released ``p_y`` reaches this (official
            0.95); None never stops early.
        mutation_prob: Probability that a child coordinate is mutated (official 0.1).
        mutation_ce: Mutation noise scale, in units of the pool's p-space std (official 0.1).
        p_std_ce: Half-width of the box, in units of the pool's p-space std (official 1.0).
        truncation: Truncation psi of the pool's w (official 0.7).
        elites: Fittest latents kept unchanged each generation (official 1).
        official_crossover: Use the official crossover weight ``f1 / (f1 + f2)`` on log
            probabilities (favours the worse parent) instead of ``p1 / (p1 + p2)``.
        shared_noise: Share one mutation noise vector per entry and generation (official) instead
            of one per child.
        query_batch: At most this many images per generator/oracle call (None: one call each);
            only memory, never the result, depends on it.
        rng: CPU generator for every random draw (None: torch's global one).
        on_step: Progress hook, called with step 1 for the initial population and step ``g + 1``
            after generation ``g``, total ``generations + 1``; info ``loss`` (mean over entries of
            the elite's ``-log p_y``), ``running`` (entries still searching) and
            ``confidence`` (mean elite ``p_y``).

    Returns:
        :class:`InversionResult` with each entry's elite image and its w (N, w_dim) as latents;
        ``losses`` holds ``loss`` per step (initial population first); ``extras``:
        ``"fitness"`` (N,) elite ``log p_y``, ``"confidence"`` (N,) elite ``p_y``,
        ``"generations"`` (N,) generations each entry ran, ``"reached"`` (N,) bool (stop
        confidence reached), ``"pool_queries"``, ``"initial_fitness"`` (N,) the best pool
        fitness, ``"stopped_by_budget"``.

    Raises:
        ValueError: a bad argument (named in the message) or a generator whose images do not
            fit the target.
        TypeError: a generator without the style-generator interface.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import tiny_classifier, tiny_style_generator
        >>> oracle = TargetOracle(tiny_classifier(), access="probabilities")
        >>> res = mirror_attack(oracle, torch.tensor([0, 2]), style_generator=tiny_style_generator(),
        ...                     population=8, pool_size=32, generations=3, stop_confidence=None,
        ...                     rng=torch.Generator().manual_seed(0))
        >>> res.queries == 32 + (8 - 1) * 3 * 2, res.images.shape
        (True, torch.Size([2, 1, 8, 8]))
    """
    check_labels(labels, oracle.num_classes)
    if population < 2:
        raise ValueError(f"population must be >= 2, got {population}")
    if pool_size < population:
        raise ValueError(f"pool_size must be >= population ({population}), got {pool_size}")
    if generations < 0:
        raise ValueError(f"generations must be >= 0, got {generations}")
    if stop_confidence is not None and not 0 < stop_confidence <= 1:
        raise ValueError(f"stop_confidence must lie in (0, 1] or be None, got {stop_confidence}")
    if not 0 <= mutation_prob <= 1:
        raise ValueError(f"mutation_prob must lie in [0, 1], got {mutation_prob}")
    if mutation_ce < 0:
        raise ValueError(f"mutation_ce must be >= 0, got {mutation_ce}")
    if p_std_ce <= 0:
        raise ValueError(f"p_std_ce must be positive, got {p_std_ce}")
    if truncation <= 0:
        raise ValueError(f"truncation must be positive, got {truncation}")
    if not 1 <= elites < population:
        raise ValueError(f"elites must lie in [1, population) = [1, {population}), got {elites}")
    if query_batch is not None and query_batch < 1:
        raise ValueError(f"query_batch must be >= 1 or None, got {query_batch}")
    generator = style_generator
    _check_style_generator(generator, oracle.input_shape)

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    slope = float(generator.mapping_slope)
    n = labels.numel()
    y = labels.cpu()
    classes, entry_class = y.unique(return_inverse=True)  # the pool is scored for each class once
    classes_dev = classes.to(device)
    stop_at = math.inf if stop_confidence is None else math.log(stop_confidence)

    def score_pool(w: Tensor) -> Tensor:
        return torch.cat(
            [s[:, classes_dev].cpu() for s in _log_scores(oracle, generator, w, query_batch)]
        )

    with eval_mode(generator), torch.no_grad():
        scored = affordable(oracle, pool_size)  # a pool the budget cannot pay is truncated
        stopped_by_budget = scored < pool_size
        box_acc = _Box(generator.w_dim, slope, device)
        if scored > 0:
            blocks = _pool_blocks(generator, scored, truncation, device, rng)
            pop_c, fit_c = _initial_population(blocks, score_pool, classes, population, box_acc)
            pop, fit = pop_c[entry_class], fit_c[entry_class]
        else:  # nothing can be queried: every entry keeps the truncated mean latent, unscored
            w0 = generator.w_avg.reshape(1, 1, -1).to(device)
            pop, fit = w0.expand(n, 1, -1).clone(), torch.full((n, 1), -math.inf)
        pool_queries = oracle.queries - start_queries
        box = box_acc.close(p_std_ce, pop.dtype)
        initial_fitness = fit[:, 0].clone()
        done_gens = torch.zeros(n, dtype=torch.long)
        running = fit[:, 0] < stop_at
        children_per_entry = pop.shape[1] - elites
        losses: list[float] = []

        def report(step: int) -> None:
            losses.append(float(-fit[:, 0].mean()))
            if on_step is not None:
                on_step(
                    step,
                    generations + 1,
                    {
                        "loss": losses[-1],
                        "running": float(running.sum()),
                        "confidence": float(fit[:, 0].exp().mean()),
                    },
                )

        report(1)
        for gen in range(1, generations + 1):
            idx = running.nonzero().squeeze(1)
            if idx.numel() == 0 or children_per_entry < 1:
                break
            need = idx.numel() * children_per_entry
            if affordable(oracle, need) < need:
                stopped_by_budget = True
                break
            children = _offspring(
                pop[idx.to(device)],
                fit[idx],
                elites=elites,
                box=box,
                slope=slope,
                mutation_prob=mutation_prob,
                mutation_ce=mutation_ce,
                official_crossover=official_crossover,
                shared_noise=shared_noise,
                rng=rng,
            )
            child_fit = _fitness(
                oracle,
                generator,
                children.reshape(need, -1),
                y[idx].repeat_interleave(children_per_entry).to(device),
                query_batch,
            ).view(idx.numel(), children_per_entry)
            new_fit = torch.cat([fit[idx, :elites], child_fit], dim=1)
            new_fit, order = new_fit.sort(dim=1, descending=True, stable=True)
            new_pop = torch.cat([pop[idx.to(device), :elites], children], dim=1)
            rows = torch.arange(idx.numel(), device=device)[:, None]
            pop[idx.to(device)] = new_pop[rows, order.to(device)]
            fit[idx] = new_fit
            done_gens[idx] += 1
            running[idx] = fit[idx, 0] < stop_at
            report(gen + 1)

        elite = pop[:, 0]
        images = torch.cat([generator.synthesize_w(part) for part in _chunks(elite, query_batch)])

    return InversionResult(
        attack="mirror",
        images=images.cpu(),
        labels=labels.cpu(),
        latents=elite.cpu(),
        losses=losses,
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "fitness": fit[:, 0].clone(),
            "confidence": fit[:, 0].exp(),
            "generations": done_gens,
            "reached": fit[:, 0] >= stop_at,  # all False without a stop_confidence
            "pool_queries": pool_queries,
            "initial_fitness": initial_fitness,
            "stopped_by_budget": stopped_by_budget,
        },
    )


#: What the study engine needs to know: access level and the public style generator.
SPEC = AttackSpec(
    "mirror",
    mirror_attack,
    access="probabilities",
    needs=(STYLE_GENERATOR,),
    quick={"population": 16, "pool_size": 64, "generations": 3},
)
