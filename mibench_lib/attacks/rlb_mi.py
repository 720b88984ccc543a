"""Reinforcement-learning-based black-box model inversion (RLB-MI): Han, Choi, Lee and Kim,
"Reinforcement Learning-Based Black-Box Model Inversion Attacks", CVPR 2023,
https://arxiv.org/abs/2304.04625.

Algorithm. For every label entry ``y``, a soft actor-critic (SAC) agent learns to steer the
latent space of a public GAN towards images the target assigns to ``y``, from the target's
probabilities alone. Each episode is one step of a Markov decision process:

1. state ``z ~ N(0, I)`` (fresh every episode); action ``a = tanh(mu(z) + sigma(z) * eps)`` in
   ``(-1, 1)^latent_dim`` from a squashed Gaussian policy; next state
   ``z' = alpha * z + (1 - alpha) * a`` (official ``alpha = 0``: ``z' = a``);
2. reward ``2 log p_y(G(z')) + 2 log p_y(G(a)) + 8 log max(1e-7, p_y(G(z')) - max_{j != y}
   p_j(G(z')))``: the margin term sits at its floor ``8 ln 1e-7 = -128.9`` while another class
   wins, and rises with the margin once ``y`` is top-1;
3. the transition is stored in the agent's replay memory; once the memory holds more than
   ``learn_start`` transitions, every episode makes one SAC update on ``batch_size`` transitions
   drawn without replacement. The episode ends after its one step (``done = 1``), so the critics'
   target is the reward alone (a contextual bandit): the target critics and ``gamma`` never enter
   a loss, although they are kept and soft-updated as in the official agent;
4. a test rollout then runs the updated policy from a fresh ``z``; its image's ``p_y`` is
   compared with the best so far (``>=``, from 0), and the best test image is kept. The output
   is, per entry, the kept image: the highest-confidence policy sample over all episodes.

SAC update (Haarnoja et al. 2018, the form the paper describes): two critics ``Q1, Q2`` (MLPs
``2 d -> hidden -> hidden -> 1``) regress the target with ``0.5 * MSE``; the actor (MLP ``d ->
hidden -> hidden -> 2 d``: mean and log standard deviation clamped to ``[-20, 2]``) minimises
``mean(T * log pi(a|z) - min(Q1, Q2)(z, a))`` with ``a`` resampled from the current policy and
``log pi`` summed over the action dimensions (with the tanh correction ``log(1 - a^2 + 1e-6)``);
the temperature ``T = exp(log_T)`` (``log_T = 0`` at the start) minimises
``-mean(log_T * (log pi + target_entropy))`` with ``target_entropy = -latent_dim``; the actor
uses the temperature from before this step's temperature update. Adam with the one learning
rate ``lr`` for actor, critics and temperature; target critics follow
``tau * critic + (1 - tau) * target`` after each update. Critic initialisation follows the
official code (hidden weights ``U(+-1/sqrt(hidden))``, output weights ``U(+-3e-3)``, biases
PyTorch's default); the actor keeps PyTorch's default ``nn.Linear`` initialisation (the official
``Actor.reset_parameters`` is never called).

Batching. The N agents (one per label entry, repeats included) are trained in lockstep: their
parameters are stacked along a leading agent axis and every layer is one batched matrix product
(``torch.baddbmm``); both critics of every agent run as one stack of ``2 N`` networks. Each
agent's loss is its own mean over its batch, and the losses are summed over agents, so every
agent receives exactly the gradient it would receive alone, and Adam (elementwise) updates it
exactly as it would alone. One episode is one generator pass and one oracle call for all
entries: this episode's training images and the previous episode's test images, which come from
the same policy (the test rollout runs the policy after an update, the policy the next episode
acts with); the last test rollout is scored in one further call. Each agent's replay memory is a
preallocated ``(N, capacity, ...)`` tensor with ``capacity = min(replay_size, episodes)``, first
in first out once full; ``z'`` is not stored (it is ``alpha z + (1 - alpha) a``, and with
``done = 1`` no loss reads it). Memory: ``4 (2 latent_dim + 1) capacity`` bytes per entry for the
replay, plus about ``12 * (parameters of one actor and two critics)`` for the networks and Adam.

Cost. A learning episode is one SAC update per agent, about 0.8 GFLOP at the official sizes
(hidden 256, batch 256, latent 100), whatever the images cost: on one CPU thread, 5 entries at
32 px (DCGAN latent 100, ``mnist_cnn`` target) took about 0.25 s per episode on a busy 2-core
machine, of which the generator and the target took 10 ms; the official 40,000 episodes are a
GPU budget.

Queries. Each episode sends ``3 N`` images (next-state image, action image, test image), except
that with ``alpha == 0`` the next-state image *is* the action image (``z' = a`` exactly), so it
is sent once and its answer used for both reward terms: ``2 N`` per episode. In total
``episodes * N * (2 if alpha == 0 else 3)``. Before every episode the attack checks that the
oracle's budget pays for the whole episode (training and test images); if not, it stops and
returns the kept images (``extras["stopped_by_budget"]``). A budget too small for one episode
spends nothing: the images are then the untrained policy's samples, never queried, with kept
score NaN.

Deliberate deviations from the official code (``attack.py``, ``SAC.py`` and ``main.py`` of the
authors' repository, whose SAC comes from BY571's "Soft-Actor-Critic-and-Extensions"):

- Exploration noise: the official ``Actor`` draws *one scalar* ``N(0, 1)`` per call and shares it
  by every action dimension and every transition of a batch; here the noise is independent per
  dimension and per sample, as SAC defines it.
- ``log pi`` is summed over the action dimensions (the official code averages it, which shrinks
  the entropy term 100-fold against the target entropy ``-100`` and drives the temperature down
  throughout).
- The actor loss uses ``min(Q1, Q2)`` (the official code uses critic 1 only); critics 1 and 2 are
  drawn independently (the official agent seeds both with the same seed, so the twin critics are
  identical and stay identical).
- Agents are initialised from ``rng``, each entry its own draw (the official script re-seeds
  ``torch.manual_seed(42)`` for every class, so all agents start identical).
- The bootstrap term ``gamma * (1 - done) * (min Q_target(z'', a'') - T log pi(a''|z''))`` is
  computed only for batches with ``done = 0``, which never happen here (one-step episodes;
  multi-step episodes, ``max_step > 1`` in the official code, are not implemented). The official
  code computes it and multiplies it by zero.
- The duplicate query at ``alpha == 0`` is not sent (see Queries).
- Batched lockstep training, one oracle call per episode for all entries (see Batching); random
  draws come from a generator seeded once from ``rng`` on the oracle's device.
- The official script also stores the best actor and writes images to disk at every improvement,
  and its evaluator is only run after the attack; none of that is part of the attack here.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib._checks import check_int, check_labels
from mibench_lib.attacks._frozen import eval_mode
from mibench_lib.attacks._query import affordable, released_scores
from mibench_lib.attacks._result import InversionResult, StepCallback
from mibench_lib.attacks._spec import AttackSpec
from mibench_lib.byo import check_generator
from mibench_lib.generators.base import Generator
from mibench_lib.oracle import TargetOracle

__all__ = ["rlb_mi_attack"]

_LOG_STD_MIN, _LOG_STD_MAX = -20.0, 2.0  # official clamp of the policy's log standard deviation
_TANH_EPS = 1e-6  # official epsilon in log(1 - a^2 + eps)
_MARGIN_FLOOR = 1e-7  # official floor of the margin p_y - max_{j != y} p_j before its log
_SCORE_FLOOR = 1e-30  # released scores may be 0 (top-k, labels, defenses): log stays finite
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_REPORT_EVERY = 50  # episodes between on_step reports


# -- the MDP ----------------------------------------------------------------------------------
def _next_state(z: Tensor, action: Tensor, alpha: float) -> Tensor:
    """``alpha z + (1 - alpha) a``; exactly ``a`` when ``alpha == 0`` (official default).

    Example:
        >>> z, a = torch.randn(2, 4), torch.rand(2, 4)
        >>> torch.equal(_next_state(z, a, 0.0), a)
        True
    """
    if alpha == 0:
        return action.clone()
    return alpha * z + (1 - alpha) * action


def _reward(
    scores_next: Tensor,
    scores_action: Tensor,
    y: Tensor,
    weights: tuple[float, float, float] = (2.0, 2.0, 8.0),
) -> Tensor:
    """The official reward of each transition from released scores: (N,).

    ``w1 log p_y(G(z')) + w2 log p_y(G(a)) + w3 log max(1e-7, p_y(G(z')) - max_{j != y}
    p_j(G(z')))``; scores of 0 (a top-k or label release) are floored at 1e-30 before the log.

    Args:
        scores_next: (N, K) scores of the next-state images. scores_action: (N, K) scores of the
            action images. y: (N,) labels.

    Example:
        >>> p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
        >>> [round(v, 1) for v in _reward(p, p, torch.tensor([0, 0])).tolist()]
        [-7.0, -135.4]
    """
    py_next = scores_next.gather(1, y[:, None]).squeeze(1)
    py_action = scores_action.gather(1, y[:, None]).squeeze(1)
    others = scores_next.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    margin = (py_next - others).clamp_min(_MARGIN_FLOOR)
    w_next, w_action, w_margin = weights
    return (
        w_next * py_next.clamp_min(_SCORE_FLOOR).log()
        + w_action * py_action.clamp_min(_SCORE_FLOOR).log()
        + w_margin * margin.log()
    )


def _critic_targets(
    reward: Tensor,
    done: Tensor,
    gamma: float,
    q_next: Tensor,
    temperature: Tensor,
    log_prob_next: Tensor,
) -> Tensor:
    """SAC's critic target ``r + gamma (1 - done) (min Q_target(s', a') - T log pi(a'|s'))``.

    Every RLB-MI episode ends after one step (``done = 1``), so the target is the reward.

    Example:
        >>> r = torch.tensor([[1.0, -2.0]])
        >>> t = _critic_targets(r, torch.ones(1, 2), 0.99, torch.randn(1, 2), torch.ones(1, 1),
        ...                     torch.randn(1, 2))
        >>> torch.equal(t, r)
        True
    """
    return reward + gamma * (1 - done) * (q_next - temperature * log_prob_next)


def _keep(
    best: Tensor,
    best_images: Tensor,
    best_latents: Tensor,
    score: Tensor,
    images: Tensor,
    latents: Tensor,
) -> Tensor:
    """Keep, in place, each entry's test image whose score is ``>=`` its best so far.

    Returns:
        (N,) bool: the entries whose kept image changed.
    """
    better = score >= best
    best.copy_(torch.where(better, score, best))
    best_images[better] = images[better]
    best_latents[better] = latents[better]
    return better


# -- N SAC agents in lockstep -----------------------------------------------------------------
def _uniform(shape: tuple[int, ...], bound: float, rng: torch.Generator | None) -> Tensor:
    return (torch.rand(shape, generator=rng) * 2 - 1) * bound


def _linear(
    n: int,
    fan_in: int,
    fan_out: int,
    rng: torch.Generator | None,
    *,
    weight_bound: float | None = None,
) -> list[Tensor]:
    """``n`` stacked linear layers ``[W (n, fan_in, fan_out), b (n, 1, fan_out)]``.

    Default bounds are ``nn.Linear``'s: ``U(+-1/sqrt(fan_in))`` for weights and biases.
    """
    default = 1 / math.sqrt(fan_in)
    weight = _uniform((n, fan_in, fan_out), default if weight_bound is None else weight_bound, rng)
    return [weight, _uniform((n, 1, fan_out), default, rng)]


def _mlp(params: Sequence[Tensor], x: Tensor) -> Tensor:
    """Stacked MLP with ReLU between layers: (n, B, in) -> (n, B, out)."""
    layers = len(params) // 2
    for i in range(layers):
        x = torch.baddbmm(params[2 * i + 1], x, params[2 * i])
        if i < layers - 1:
            x = F.relu(x)
    return x


def _assign_grads(params: Sequence[Tensor], loss: Tensor) -> None:
    for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
        p.grad = g


class _Agents:
    """``n`` independent SAC agents (actor, two critics, two target critics, temperature).

    Parameters carry a leading agent axis; the critics are one stack of ``2 n`` networks
    (critic 1 of every agent, then critic 2). Randomness of actions and updates comes from the
    caller (``eps`` tensors), so the class draws nothing after its initialisation.
    """

    def __init__(
        self,
        n: int,
        dim: int,
        *,
        hidden: int,
        lr: float,
        gamma: float,
        tau: float,
        init_rng: torch.Generator | None,
        device: torch.device,
    ) -> None:
        self.n, self.dim, self.gamma, self.tau = n, dim, gamma, tau
        self.target_entropy = -float(dim)
        actor = [
            *_linear(n, dim, hidden, init_rng),
            *_linear(n, hidden, hidden, init_rng),
            *_linear(n, hidden, 2 * dim, init_rng),  # mean and log-std heads side by side
        ]
        bound = 1 / math.sqrt(hidden)  # official hidden_init: 1/sqrt(weight.size(0)) = hidden
        critics = [
            *_linear(2 * n, 2 * dim, hidden, init_rng, weight_bound=bound),
            *_linear(2 * n, hidden, hidden, init_rng, weight_bound=bound),
            *_linear(2 * n, hidden, 1, init_rng, weight_bound=3e-3),
        ]
        self.actor = [p.to(device).requires_grad_(True) for p in actor]
        self.critics = [p.to(device).requires_grad_(True) for p in critics]
        self.targets = [p.detach().clone() for p in self.critics]
        self.log_temp = torch.zeros(n, device=device, requires_grad=True)
        # actor and temperature step together: neither loss reaches the other's parameters
        self.critic_opt = torch.optim.Adam(self.critics, lr=lr, foreach=True)
        self.actor_opt = torch.optim.Adam([*self.actor, self.log_temp], lr=lr, foreach=True)
        self.updates = 0

    def policy(self, state: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Squashed Gaussian actions and their log-probabilities.

        Args:
            state: (n, B, dim). eps: (n, B, dim) standard normal noise.

        Returns:
            ``(action (n, B, dim) in (-1, 1), log_prob (n, B))``, log-probability summed over
            the action dimensions, with the tanh correction.
        """
        mean, log_std = _mlp(self.actor, state).split(self.dim, dim=-1)
        log_std = log_std.clamp(_LOG_STD_MIN, _LOG_STD_MAX)
        action = torch.tanh(mean + log_std.exp() * eps)
        gauss = -0.5 * eps.square() - log_std - _HALF_LOG_2PI  # log N(u; mean, std) at u
        log_prob = (gauss - torch.log(1 - action.square() + _TANH_EPS)).sum(dim=-1)
        return action, log_prob

    def q(self, params: Sequence[Tensor], state: Tensor, action: Tensor) -> Tensor:
        """Both critics' values: (2, n, B) for (n, B, dim) states and actions."""
        x = torch.cat((state, action), dim=-1).repeat(2, 1, 1)
        return _mlp(params, x).view(2, self.n, -1)

    def learn(
        self,
        state: Tensor,
        action: Tensor,
        reward: Tensor,
        done: Tensor,
        next_state: Tensor,
        eps: Tensor,
        eps_next: Tensor | None = None,
    ) -> None:
        """One SAC update of every agent on its own batch (n, B, ...).

        ``eps`` resamples the actor's actions at ``state``; ``eps_next`` the next actions of the
        bootstrap term, needed only when some ``done`` is 0.
        """
        with torch.no_grad():
            if bool((done < 1).any()):
                if eps_next is None:
                    raise ValueError("eps_next is needed for transitions with done = 0")
                next_action, log_prob_next = self.policy(next_state, eps_next)
                q_next = self.q(self.targets, next_state, next_action).amin(dim=0)
                temp = self.log_temp.exp()[:, None]
                target = _critic_targets(reward, done, self.gamma, q_next, temp, log_prob_next)
            else:
                target = reward
        # critics: 0.5 * MSE each, summed over critics and agents (each agent's gradient is its own)
        q = self.q(self.critics, state, action)
        critic_loss = 0.5 * (q - target).square().mean(dim=-1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        _assign_grads(self.critics, critic_loss)
        self.critic_opt.step()
        # temperature (from before its update) and actor against the updated critics
        # (one backward pass: the temperature loss sees log pi detached, the actor loss T detached)
        temp = self.log_temp.detach().exp()[:, None]
        new_action, log_prob = self.policy(state, eps)
        temp_loss = -(self.log_temp[:, None] * (log_prob.detach() + self.target_entropy))
        q_new = self.q(self.critics, state, new_action).amin(dim=0)
        actor_loss = (temp * log_prob - q_new).mean(dim=-1).sum()
        self.actor_opt.zero_grad(set_to_none=True)
        _assign_grads([*self.actor, self.log_temp], actor_loss + temp_loss.mean(dim=-1).sum())
        self.actor_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.targets, [p.detach() for p in self.critics], self.tau)
        self.updates += 1


def _sample_indices(
    n: int, size: int, k: int, gen: torch.Generator, device: torch.device
) -> Tensor:
    """For each of ``n`` agents, ``k`` distinct indices in ``[0, size)``, uniformly: (n, k).

    Sparse case: draws with replacement and redraws duplicates until none is left; the process
    is symmetric under relabelling of ``[0, size)``, so every k-subset is equally likely (like
    ``random.sample``). Dense case (``2 k > size``): the k largest of ``size`` uniform keys.
    """
    if 2 * k > size:
        keys = torch.rand(n, size, generator=gen, device=device)
        return keys.topk(k, dim=1).indices
    idx = torch.randint(size, (n, k), generator=gen, device=device)
    while True:
        ordered, order = idx.sort(dim=1)
        repeat = torch.zeros_like(idx, dtype=torch.bool)
        repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        if not bool(repeat.any()):
            return idx
        repeat = torch.zeros_like(repeat).scatter_(1, order, repeat)
        idx[repeat] = torch.randint(size, (int(repeat.sum()),), generator=gen, device=device)


# -- the attack -------------------------------------------------------------------------------
def _check_real(name: str, value: object, low: float, high: float, *, open_low: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low < value if open_low else low <= value) or value > high:  # type: ignore[operator]
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")


def _check_weights(weights: object) -> tuple[float, float, float]:
    if (
        not isinstance(weights, Sequence)
        or isinstance(weights, str)
        or len(weights) != 3
        or not all(
            isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w)
            for w in weights
        )
    ):
        raise ValueError(f"reward_weights must be three finite numbers, got {weights!r}")
    return float(weights[0]), float(weights[1]), float(weights[2])


def _generate_and_score(
    oracle: TargetOracle, generator: Generator, latents: Tensor, chunk: int | None
) -> tuple[Tensor, Tensor]:
    """``G(latents)`` and the oracle's scores for them: ((M, C, H, W), (M, K)), one query each."""
    parts = latents.split(chunk) if chunk is not None else (latents,)
    images = torch.cat([generator(part) for part in parts])
    return images, released_scores(oracle, images, chunk=chunk)


def rlb_mi_attack(
    oracle: TargetOracle,
    labels: Tensor,
    *,
    generator: Generator,
    episodes: int = 40_000,
    alpha: float = 0.0,
    reward_weights: tuple[float, float, float] = (2.0, 2.0, 8.0),
    hidden: int = 256,
    lr: float = 5e-4,
    gamma: float = 0.99,
    tau: float = 0.01,
    batch_size: int = 256,
    replay_size: int = 1_000_000,
    learn_start: int = 256,
    query_batch: int | None = 4096,
    rng: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> InversionResult:
    """Invert ``labels`` from the target's probabilities with one SAC agent per label entry.

    Works at every black-box access level through the released scores
    (:func:`~mibench_lib.attacks._query.released_scores`): probabilities as intended, top-k rows
    (zeros outside the k largest), logits (softmaxed) or labels (one-hot rows; the reward then
    only tells top-1 from not). The generator is checked first against
    :func:`mibench_lib.byo.check_generator`.

    Args:
        oracle: Oracle of the target at any access level (official: probabilities).
        labels: (N,) int64 class ids in ``[0, K)``; repeats allowed (each entry its own agent).
        generator: Public-data GAN generator on the oracle's device, (M, latent_dim) ->
            (M, C, H, W) in [0, 1], with a ``latent_dim`` attribute; latent space and action
            space are both ``latent_dim``-dimensional. Run in eval mode without gradients.
        episodes: Episodes per entry (official 40,000; 10,000 in the authors' simplified run).
        alpha: Weight of the state in the next state ``alpha z + (1 - alpha) a`` (official 0).
        reward_weights: Weights of the reward's next-state log-probability, action
            log-probability and log-margin terms (official (2, 2, 8)).
        hidden: Width of the actor's and critics' two hidden layers (official 256).
        lr: Adam learning rate of actor, critics and temperature (official 5e-4).
        gamma: Discount factor (official 0.99); no loss reads it with one-step episodes.
        tau: Soft-update rate of the target critics (official 0.01).
        batch_size: Transitions per SAC update (official 256).
        replay_size: Replay memory per entry (official 1e6); the attack allocates
            ``min(replay_size, episodes)`` transitions.
        learn_start: An agent learns once its memory holds more than this many transitions
            (official: more than ``batch_size`` = 256, i.e. from episode 257 on); at least
            ``batch_size - 1``, so that a batch of distinct transitions exists.
        query_batch: At most this many images are generated and sent to the oracle per call
            (None: each episode's images in one call). Only memory changes.
        rng: CPU generator for the agents' initialisation and the seed of the attack's
            generator on the oracle's device, which draws states, action noise, replay batches
            and test rollouts.
        on_step: Progress hook ``on_step(episode, episodes, info)`` every 50 episodes and at the
            last, with the mean kept score, the episode's mean test score and reward, and the
            mean log-temperature.

    Returns:
        InversionResult with images (N, C, H, W) on the CPU in [0, 1] (each entry's kept test
        image), the labels, the kept latents (the next states ``z'`` of the kept test rollouts),
        ``losses`` (per episode, minus the mean reward of its training transitions),
        ``queries`` (``episodes_run * N * (2 if alpha == 0 else 3)``) and ``extras``:

        - ``"kept_scores"``: (N,) released ``p_y`` of each kept image (NaN if no episode ran);
        - ``"recent_test_scores"``: (N,) mean test ``p_y`` over the last 50 episodes (the
          trained policy's samples, not the best of them);
        - ``"kept_score_mean"``: per episode, the mean kept score (non-decreasing);
        - ``"episodes"``: episodes run; ``"updates"``: SAC updates made per agent;
        - ``"log_temperature"``: (N,) final log-temperature of each agent;
        - ``"queries_per_episode"``: ``N * (2 if alpha == 0 else 3)``;
        - ``"stopped_by_budget"``: whether the oracle's budget ended the attack early.

    Raises:
        ValueError: bad labels or arguments (named), or a generator that breaks its contract.
        TypeError: a generator without ``latent_dim``.

    Example:
        >>> from mibench_lib.oracle import TargetOracle
        >>> from mibench_lib.testing import tiny_classifier, tiny_generator
        >>> oracle = TargetOracle(tiny_classifier(), access="probabilities")
        >>> res = rlb_mi_attack(oracle, torch.tensor([0, 3]), generator=tiny_generator(),
        ...                     episodes=5, hidden=8, batch_size=2, learn_start=2,
        ...                     rng=torch.Generator().manual_seed(0))
        >>> res.images.shape, res.queries, res.extras["updates"]
        (torch.Size([2, 1, 8, 8]), 20, 3)
    """
    check_labels(labels, oracle.num_classes)
    check_int("episodes", episodes, 0)
    _check_real("alpha", alpha, 0.0, 1.0, open_low=False)
    weights = _check_weights(reward_weights)
    check_int("hidden", hidden, 1)
    _check_real("lr", lr, 0.0, math.inf, open_low=True)
    _check_real("gamma", gamma, 0.0, 1.0, open_low=False)
    _check_real("tau", tau, 0.0, 1.0, open_low=True)
    check_int("batch_size", batch_size, 1)
    check_int("learn_start", learn_start, max(0, batch_size - 1))
    check_int("replay_size", replay_size, learn_start + 1)
    if query_batch is not None:
        check_int("query_batch", query_batch, 1)
    check_generator(generator, image_shape=oracle.input_shape)

    start_queries, t0 = oracle.queries, time.perf_counter()
    device = oracle.device
    n, dim = labels.numel(), generator.latent_dim
    y = labels.to(device)
    dedupe = alpha == 0
    per_episode = n * (2 if dedupe else 3)
    agents = _Agents(
        n, dim, hidden=hidden, lr=lr, gamma=gamma, tau=tau, init_rng=rng, device=device
    )
    gen = torch.Generator(device=device)
    gen.manual_seed(int(torch.randint(0, 2**62, (), generator=rng)))
    capacity = max(1, min(replay_size, episodes))
    states = torch.empty(n, capacity, dim, device=device)
    actions = torch.empty(n, capacity, dim, device=device)
    rewards = torch.empty(n, capacity, device=device)
    done = torch.ones(n, batch_size, device=device)
    rows = torch.arange(n, device=device)[:, None]
    kept = torch.zeros(n, device=device)  # official best score starts at 0, compared with >=
    kept_images = torch.zeros(n, *oracle.input_shape, device=device)
    kept_latents = torch.zeros(n, dim, device=device)
    recent: list[Tensor] = []
    kept_trace: list[float] = []
    losses: list[float] = []

    def rollout() -> tuple[Tensor, Tensor]:
        """A fresh state and the current policy's action for every agent."""
        z = torch.randn(n, dim, generator=gen, device=device)
        eps = torch.randn(n, 1, dim, generator=gen, device=device)
        with torch.no_grad():
            action, _ = agents.policy(z[:, None, :], eps)
        return z, action[:, 0]

    def score_test(images: Tensor, scores: Tensor, latents: Tensor, reward: float) -> None:
        """Keep the test images of the episode just finished and report it."""
        p_y = scores.gather(1, y[:, None]).squeeze(1)
        _keep(kept, kept_images, kept_latents, p_y, images, latents)
        recent.append(p_y)
        del recent[:-_REPORT_EVERY]
        kept_trace.append(float(kept.mean()))
        episode = len(kept_trace)
        if on_step is not None and (episode % _REPORT_EVERY == 0 or episode == episodes):
            on_step(
                episode,
                episodes,
                {
                    "kept_score": kept_trace[-1],
                    "test_score": float(p_y.mean()),
                    "reward": reward,
                    "log_temperature": float(agents.log_temp.detach().mean()),
                },
            )

    size, ran, stopped = 0, 0, False
    pending: tuple[Tensor, float] | None = None  # previous episode's test latents and reward
    with eval_mode(generator):
        while ran < episodes:
            owed = n if pending is not None else 0  # the previous test images, paid now
            if affordable(oracle, owed + per_episode) < owed + per_episode:
                stopped = True
                break
            # this episode's transition and the previous episode's test: one policy, one call
            z, action = rollout()
            nxt = _next_state(z, action, alpha)
            parts = [nxt] if dedupe else [nxt, action]
            if pending is not None:
                parts.append(pending[0])
            with torch.no_grad():
                images, scores = _generate_and_score(
                    oracle, generator, torch.cat(parts), query_batch
                )
            if pending is not None:
                score_test(images[-n:], scores[-n:], pending[0], pending[1])
            reward = _reward(scores[:n], scores[:n] if dedupe else scores[n : 2 * n], y, weights)
            slot = ran % capacity
            states[:, slot], actions[:, slot], rewards[:, slot] = z, action, reward
            size = min(size + 1, capacity)
            if size > learn_start:
                idx = _sample_indices(n, size, batch_size, gen, device)
                s, a = states[rows, idx], actions[rows, idx]
                eps = torch.randn(n, batch_size, dim, generator=gen, device=device)
                agents.learn(s, a, rewards[rows, idx], done, _next_state(s, a, alpha), eps)
            ran += 1
            losses.append(-float(reward.mean()))
            z_test, action_test = rollout()
            pending = (_next_state(z_test, action_test, alpha), -losses[-1])
        if pending is not None:  # the last test rollout, reserved by the last budget check
            with torch.no_grad():
                images, scores = _generate_and_score(oracle, generator, pending[0], query_batch)
            score_test(images, scores, pending[0], pending[1])
        else:  # no episode: the untrained policy's samples, never queried
            z, action = rollout()
            kept_latents = _next_state(z, action, alpha)
            with torch.no_grad():
                parts = kept_latents.split(query_batch) if query_batch else (kept_latents,)
                kept_images = torch.cat([generator(p) for p in parts])
            kept.fill_(float("nan"))

    nan = torch.full((n,), float("nan"))
    return InversionResult(
        attack="rlb_mi",
        images=kept_images.cpu(),
        labels=labels.cpu(),
        latents=kept_latents.cpu(),
        losses=losses,
        queries=oracle.queries - start_queries,
        wall_time_s=time.perf_counter() - t0,
        extras={
            "kept_scores": kept.cpu(),
            "recent_test_scores": torch.stack(recent).mean(dim=0).cpu() if recent else nan,
            "kept_score_mean": kept_trace,
            "episodes": ran,
            "updates": agents.updates,
            "log_temperature": agents.log_temp.detach().cpu(),
            "queries_per_episode": per_episode,
            "stopped_by_budget": stopped,
        },
    )


#: What the study engine needs to know: access level and public artifacts.
SPEC = AttackSpec(
    "rlb_mi",
    rlb_mi_attack,
    access="probabilities",
    needs=("generator",),
    quick={"episodes": 6, "hidden": 16, "batch_size": 4, "learn_start": 4},
)
