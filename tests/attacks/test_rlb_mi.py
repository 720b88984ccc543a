"""RLB-MI: the one-step MDP, its reward, the batched SAC agents, query accounting and budgets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibench_lib.attacks.rlb_mi import (
    SPEC,
    _Agents,
    _critic_targets,
    _keep,
    _next_state,
    _reward,
    _sample_indices,
    rlb_mi_attack,
)
from mibench_lib.models.base import Classifier
from mibench_lib.oracle import TargetOracle
from mibench_lib.testing import tiny_classifier, tiny_generator

#: Small SAC for the tiny tests (official: hidden 256, batch 256, learn after 256 transitions).
SMALL = {"hidden": 32, "batch_size": 32, "learn_start": 32, "lr": 3e-3}


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class RecordingOracle:
    """Duck-typed oracle around a TargetOracle: records each call's size and grad flags."""

    def __init__(self, oracle: TargetOracle) -> None:
        self.inner = oracle
        self.sizes: list[int] = []
        self.requires_grad: list[bool] = []
        for name in ("access", "num_classes", "input_shape", "device"):
            setattr(self, name, getattr(oracle, name))

    @property
    def queries(self) -> int:
        return self.inner.queries

    @property
    def remaining(self) -> int | None:
        return self.inner.remaining

    def __call__(self, images: Tensor) -> Tensor:
        self.sizes.append(images.shape[0])
        self.requires_grad.append(images.requires_grad or torch.is_grad_enabled())
        return self.inner(images)


class Squash4(nn.Module):
    """'Identity' generator in d = 4: (M, 4) latents -> (M, 1, 2, 2) images (clamp to [-1, 1])."""

    latent_dim = 4

    def forward(self, z: Tensor) -> Tensor:
        return ((z.clamp(-1, 1) + 1) / 2).view(-1, 1, 2, 2)


class SoftmaxLinear4(Classifier):
    """Fixed softmax-linear target on the 4 pixels of Squash4's images, 4 classes."""

    def __init__(self) -> None:
        super().__init__(4, 4, (1, 2, 2))
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(4, 4, generator=_rng(0)) * 4)
            self.head.bias.zero_()

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1) * 2 - 1


@pytest.fixture(scope="module")
def digits_run(digits_target, digits_generator):
    """300 episodes on the trained tiny digits target, one entry per class."""
    oracle = RecordingOracle(TargetOracle(digits_target, access="probabilities"))
    labels = torch.tensor([0, 1, 2, 3])
    res = rlb_mi_attack(
        oracle, labels, generator=digits_generator, episodes=300, rng=_rng(0), **SMALL
    )
    return res, oracle


# -- the feature: the agents learn where the target's class lies ---------------------------------
def test_beats_random_latents_on_a_trained_digits_target(
    digits_run, digits_target, digits_generator, label_prob
):
    res, _ = digits_run
    with torch.no_grad():
        z = torch.randn(4000, 8, generator=_rng(5))
        random_p = F.softmax(digits_target(digits_generator(z)), dim=1).mean(dim=0)
    kept_p = label_prob(digits_target, res.images, res.labels)
    # measured: policy samples 0.93 and kept images 0.997 on average, random latents 0.25
    policy_p = res.extras["recent_test_scores"]
    assert float(policy_p.mean()) > float(random_p.mean()) + 0.35
    assert float(kept_p.mean()) > float(random_p.mean()) + 0.35
    assert (policy_p > random_p[res.labels]).all()


def test_learnability_identity_generator_and_softmax_linear_target():
    target = SoftmaxLinear4().eval()
    labels = torch.arange(4)
    with torch.no_grad():  # uniform random actions, the untrained baseline
        u = torch.rand(20000, 4, generator=_rng(1)) * 2 - 1
        random_p = F.softmax(target(Squash4()(u)), dim=1).mean(dim=0)

    def policy_p(weights):
        res = rlb_mi_attack(
            TargetOracle(target, access="probabilities"),
            labels,
            generator=Squash4(),
            episodes=300,
            reward_weights=weights,
            rng=_rng(0),
            **SMALL,
        )
        return res.extras["recent_test_scores"]

    learned = policy_p((2.0, 2.0, 8.0))
    # measured: 0.99 against 0.25 for uniform random actions
    assert float(learned.mean()) > float(random_p.mean()) + 0.35
    assert (learned > random_p).all()
    # a policy that gets no reward does not find the class
    assert float(policy_p((0.0, 0.0, 0.0)).mean()) < float(random_p.mean()) + 0.2


# -- the MDP and its reward -------------------------------------------------------------------------
def test_next_state_is_the_action_at_alpha_zero_and_the_mix_otherwise():
    z = torch.randn(3, 100, generator=_rng(0))
    a = torch.rand(3, 100, generator=_rng(1)) * 2 - 1
    assert torch.equal(_next_state(z, a, 0.0), a)
    torch.testing.assert_close(_next_state(z, a, 0.25), 0.25 * z + 0.75 * a)


def test_reward_on_hand_made_probabilities():
    y = torch.tensor([0])
    # y wins: the reward rises with the margin
    rewards = []
    for p_y in (0.45, 0.5, 0.6, 0.8, 0.95):
        p = torch.tensor([[p_y, (1 - p_y) * 0.75, (1 - p_y) * 0.25]])
        r = float(_reward(p, p, y))
        assert r == pytest.approx(4 * math.log(p_y) + 8 * math.log(p_y - (1 - p_y) * 0.75))
        rewards.append(r)
    assert rewards == sorted(rewards)
    # y loses: the margin term is at its floor 8 ln 1e-7 = -128.9, whatever the gap
    floor = 8 * math.log(1e-7)
    assert floor == pytest.approx(-128.94, abs=0.01)
    for p_y in (0.05, 0.2, 0.3):
        p = torch.tensor([[p_y, 1 - p_y - 0.01, 0.01]])
        assert float(_reward(p, p, y)) == pytest.approx(4 * math.log(p_y) + floor)
    # the weights go to the next-state, action and margin terms in that order
    p_next = torch.tensor([[0.6, 0.3, 0.1]])
    p_action = torch.tensor([[0.2, 0.1, 0.7]])
    expected = 1 * math.log(0.6) + 10 * math.log(0.2) + 100 * math.log(0.3)
    assert float(_reward(p_next, p_action, y, (1.0, 10.0, 100.0))) == pytest.approx(expected)
    # a release that zeroes p_y (top-k, labels) gives a finite reward
    zero = torch.tensor([[0.0, 1.0, 0.0]])
    assert math.isfinite(float(_reward(zero, zero, y)))


def test_critic_target_is_the_reward_when_done():
    g = _rng(0)
    r, q_next, logp = torch.randn(3, 5, generator=g), torch.randn(3, 5), torch.randn(3, 5)
    temp = torch.rand(3, 1) + 0.5
    assert torch.equal(_critic_targets(r, torch.ones(3, 5), 0.99, q_next, temp, logp), r)
    expected = r + 0.99 * (q_next - temp * logp)
    torch.testing.assert_close(
        _critic_targets(r, torch.zeros(3, 5), 0.99, q_next, temp, logp), expected
    )


def _agents(n=3, dim=4, hidden=8, seed=0) -> _Agents:
    return _Agents(
        n, dim, hidden=hidden, lr=1e-2, gamma=0.99, tau=0.01, init_rng=_rng(seed), device="cpu"
    )


def _batch(n=3, b=6, dim=4, seed=1):
    g = _rng(seed)
    s, a = torch.randn(n, b, dim, generator=g), torch.rand(n, b, dim, generator=g) * 2 - 1
    return s, a, torch.randn(n, b, generator=g), torch.randn(n, b, dim, generator=g)


def _state(agents: _Agents) -> list[Tensor]:
    return [p.detach().clone() for p in (*agents.actor, *agents.critics, agents.log_temp)]


def test_done_transitions_learn_from_the_reward_alone():
    s, a, r, eps = _batch()
    one, other = _agents(), _agents()
    for p in other.targets:  # target critics and next states do not matter when done = 1
        p.add_(torch.randn(p.shape, generator=_rng(2)))
    one.learn(s, a, r, torch.ones(3, 6), a, eps)
    other.learn(s, a, r, torch.ones(3, 6), torch.randn(3, 6, 4), eps)
    for p, q in zip(_state(one), _state(other), strict=True):
        assert torch.equal(p, q)
    assert one.updates == 1
    with pytest.raises(ValueError, match="eps_next"):
        one.learn(s, a, r, torch.zeros(3, 6), a, eps)


def test_stacked_agents_update_exactly_as_each_agent_alone():
    s, a, r, eps = _batch()
    stacked = _agents()
    alone = [_agents(n=1) for _ in range(3)]
    for i, agent in enumerate(alone):  # agent i gets the stacked agent i's parameters
        with torch.no_grad():
            for mine, all_ in zip(agent.actor, stacked.actor, strict=True):
                mine.copy_(all_[i : i + 1])
            for mine, all_ in zip(agent.critics, stacked.critics, strict=True):
                mine.copy_(all_[i::3])
            for mine, all_ in zip(agent.targets, stacked.targets, strict=True):
                mine.copy_(all_[i::3])
    done = torch.ones(3, 6)
    for _ in range(3):  # three steps: Adam's moments too
        stacked.learn(s, a, r, done, a, eps)
        for i, agent in enumerate(alone):
            sl = slice(i, i + 1)
            agent.learn(s[sl], a[sl], r[sl], done[sl], a[sl], eps[sl])
    for i, agent in enumerate(alone):
        for mine, all_ in zip(agent.actor, stacked.actor, strict=True):
            torch.testing.assert_close(mine, all_[i : i + 1], rtol=1e-5, atol=1e-6)
        for mine, all_ in zip(agent.critics, stacked.critics, strict=True):
            torch.testing.assert_close(mine, all_[i::3], rtol=1e-5, atol=1e-6)
        for mine, all_ in zip(agent.targets, stacked.targets, strict=True):
            torch.testing.assert_close(mine, all_[i::3], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(agent.log_temp, stacked.log_temp[i : i + 1])


def test_policy_is_a_squashed_gaussian_with_summed_log_probabilities():
    agents = _agents(n=2, dim=4)
    state, eps = torch.randn(2, 5, 4, generator=_rng(0)), torch.randn(2, 5, 4, generator=_rng(1))
    action, log_prob = agents.policy(state, eps)
    with torch.no_grad():
        x = F.relu(torch.baddbmm(agents.actor[1], state, agents.actor[0]))
        x = F.relu(torch.baddbmm(agents.actor[3], x, agents.actor[2]))
        mean, log_std = torch.baddbmm(agents.actor[5], x, agents.actor[4]).split(4, dim=-1)
        log_std = log_std.clamp(-20, 2)
        u = mean + log_std.exp() * eps
        normal = torch.distributions.Normal(mean, log_std.exp())
        expected = (normal.log_prob(u) - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)).sum(-1)
    torch.testing.assert_close(action, torch.tanh(u))
    torch.testing.assert_close(log_prob, expected)
    assert float(action.detach().abs().max()) < 1


def test_sample_indices_are_distinct_and_uniform():
    g = torch.Generator().manual_seed(0)
    for size, k in ((10, 3), (12, 10), (1000, 32)):
        idx = _sample_indices(4, size, k, g, torch.device("cpu"))
        assert idx.shape == (4, k) and 0 <= int(idx.min()) and int(idx.max()) < size
        assert all(len(set(row)) == k for row in idx.tolist())
    counts = torch.zeros(10)
    for _ in range(2000):  # sparse path (2 k <= size): each index in 30 % of the draws
        counts += torch.bincount(_sample_indices(1, 10, 3, g, torch.device("cpu"))[0], minlength=10)
    assert ((counts / 2000 - 0.3).abs() < 0.05).all()


def test_kept_score_per_entry_never_decreases_and_follows_its_image():
    best, images, latents = torch.zeros(2), torch.zeros(2, 1, 2, 2), torch.zeros(2, 3)
    trace = []
    for step, scores in enumerate(([0.3, 0.0], [0.2, 0.5], [0.6, 0.5], [0.1, 0.4])):
        score = torch.tensor(scores)
        new_images = torch.full((2, 1, 2, 2), float(step))
        new_latents = torch.full((2, 3), float(step))
        _keep(best, images, latents, score, new_images, new_latents)
        trace.append(best.clone())
    expected = torch.tensor([[0.3, 0.0], [0.3, 0.5], [0.6, 0.5], [0.6, 0.5]])
    assert torch.equal(torch.stack(trace), expected)
    assert images[:, 0, 0, 0].tolist() == [2.0, 2.0]  # ties (>=) take the newer image
    assert latents[:, 0].tolist() == [2.0, 2.0]


# -- the attack's bookkeeping -------------------------------------------------------------------------
def test_kept_scores_never_decrease_and_the_returned_images_produced_them(
    digits_run, digits_target, digits_generator
):
    res, _ = digits_run
    trace = res.extras["kept_score_mean"]
    assert len(trace) == 300 and all(b >= a for a, b in itertools.pairwise(trace))
    assert trace[-1] == pytest.approx(float(res.extras["kept_scores"].mean()))
    answer = TargetOracle(digits_target, access="probabilities")(res.images)
    p_y = answer.gather(1, res.labels[:, None]).squeeze(1)
    torch.testing.assert_close(p_y, res.extras["kept_scores"], rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(digits_generator(res.latents), res.images, atol=1e-5, rtol=0)
    assert res.images.shape == (4, 1, 8, 8) and res.latents.shape == (4, 8)
    assert float(res.latents.abs().max()) < 1  # alpha = 0: the kept next state is an action


def test_one_oracle_call_per_episode_and_exact_query_count(digits_run):
    res, oracle = digits_run
    n, episodes = 4, 300
    # episode 1: its training images; then the previous test images with them; last test alone
    assert oracle.sizes == [n] + [2 * n] * (episodes - 1) + [n]
    assert res.queries == oracle.queries == 2 * n * episodes
    assert res.extras["queries_per_episode"] == 2 * n and res.extras["episodes"] == episodes
    assert res.extras["updates"] == episodes - 32 and not res.extras["stopped_by_budget"]
    assert not any(oracle.requires_grad)  # the oracle never sees an autograd graph
    assert len(res.losses) == episodes and all(math.isfinite(v) for v in res.losses)


def test_three_queries_per_entry_and_episode_when_alpha_is_not_zero():
    oracle = RecordingOracle(TargetOracle(tiny_classifier(), access="probabilities"))
    res = rlb_mi_attack(
        oracle, torch.tensor([0, 3]), generator=tiny_generator(), episodes=4, alpha=0.5,
        hidden=8, batch_size=2, learn_start=2, rng=_rng(0),
    )  # fmt: skip
    assert oracle.sizes == [4, 6, 6, 6, 2]
    assert res.queries == oracle.queries == 3 * 2 * 4 == 4 * res.extras["queries_per_episode"]


def test_no_learning_before_learn_start_then_the_temperature_moves():
    def run(episodes):
        return rlb_mi_attack(
            TargetOracle(tiny_classifier(), access="probabilities"),
            torch.tensor([1]),
            generator=tiny_generator(),
            episodes=episodes,
            hidden=16,
            rng=_rng(0),
        )  # official batch_size 256 and learn_start 256

    before = run(256)  # the memory holds 256 transitions: not more than learn_start
    assert before.extras["updates"] == 0
    assert torch.equal(before.extras["log_temperature"], torch.zeros(1))
    after = run(259)  # transitions 257, 258 and 259 each trigger one update
    assert after.extras["updates"] == 3
    assert float(after.extras["log_temperature"].abs().min()) > 0


@pytest.mark.parametrize("access", ["top-k", "label", "logits"])
def test_runs_on_what_an_output_defense_releases(access):
    oracle = TargetOracle(tiny_classifier(), access=access, top_k=1)
    res = rlb_mi_attack(
        oracle, torch.tensor([0, 2]), generator=tiny_generator(), episodes=6, rng=_rng(0),
        hidden=8, batch_size=2, learn_start=2,
    )  # fmt: skip
    assert res.queries == 2 * 2 * 6
    assert all(math.isfinite(v) for v in res.losses)
    assert torch.isfinite(res.extras["kept_scores"]).all()


def test_budget_stops_before_an_unaffordable_episode():
    kw = {"generator": tiny_generator(), "episodes": 8, "hidden": 8, "batch_size": 2,
          "learn_start": 2}  # fmt: skip
    labels = torch.tensor([0, 3])
    oracle = TargetOracle(tiny_classifier(), access="probabilities", budget=23)
    res = rlb_mi_attack(oracle, labels, rng=_rng(0), **kw)
    # 4 queries per episode (2 entries, alpha 0): 5 episodes fit in 23
    assert res.extras["stopped_by_budget"] and res.extras["episodes"] == 5
    assert res.queries == oracle.queries == 20 <= 23
    assert torch.isfinite(res.extras["kept_scores"]).all() and res.images.shape == (2, 1, 8, 8)
    # an exact budget is no early stop
    exact = TargetOracle(tiny_classifier(), access="probabilities", budget=32)
    res = rlb_mi_attack(exact, labels, rng=_rng(0), **kw)
    assert not res.extras["stopped_by_budget"] and res.queries == 32
    # less than one episode: nothing is spent, the untrained policy's samples come back
    tiny = TargetOracle(tiny_classifier(), access="probabilities", budget=3)
    res = rlb_mi_attack(tiny, labels, rng=_rng(0), **kw)
    assert res.extras["stopped_by_budget"] and res.queries == tiny.queries == 0
    assert res.extras["episodes"] == 0 and torch.isnan(res.extras["kept_scores"]).all()
    assert res.images.shape == (2, 1, 8, 8) and 0 <= float(res.images.min())


def test_same_seed_same_images_other_seed_other_images():
    def run(seed):
        return rlb_mi_attack(
            TargetOracle(tiny_classifier(), access="probabilities"),
            torch.tensor([0, 3, 3]),
            generator=tiny_generator(),
            episodes=12,
            hidden=8,
            batch_size=4,
            learn_start=4,
            rng=_rng(seed),
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert a.losses == b.losses
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.latents[1], a.latents[2])  # repeated labels: their own agents


def test_progress_every_50_episodes_and_at_the_last():
    calls = []
    rlb_mi_attack(
        TargetOracle(tiny_classifier(), access="probabilities"), torch.tensor([1]),
        generator=tiny_generator(), episodes=120, hidden=8, batch_size=2, learn_start=500,
        rng=_rng(0), on_step=lambda step, total, info: calls.append((step, total, info)),
    )  # fmt: skip
    assert [(s, t) for s, t, _ in calls] == [(50, 120), (100, 120), (120, 120)]
    assert set(calls[0][2]) == {"kept_score", "test_score", "reward", "log_temperature"}
    assert all(isinstance(v, float) for _, _, info in calls for v in info.values())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"episodes": -1}, "episodes"),
        ({"episodes": 2.5}, "episodes"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"reward_weights": (1.0, 2.0)}, "reward_weights"),
        ({"hidden": 0}, "hidden"),
        ({"lr": 0.0}, "lr"),
        ({"gamma": 1.5}, "gamma"),
        ({"tau": 0.0}, "tau"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 8, "learn_start": 4}, "learn_start"),
        ({"replay_size": 4, "batch_size": 4, "learn_start": 4}, "replay_size"),
        ({"query_batch": 0}, "query_batch"),
    ],
)
def test_bad_arguments_raise_before_any_query(kwargs, name):
    oracle = TargetOracle(tiny_classifier(), access="probabilities")
    with pytest.raises(ValueError, match=name):
        rlb_mi_attack(oracle, torch.tensor([0]), generator=tiny_generator(), rng=_rng(0), **kwargs)
    assert oracle.queries == 0


def test_spec_declares_probabilities_and_the_public_generator():
    assert SPEC.name == "rlb_mi" and SPEC.run is rlb_mi_attack
    assert SPEC.access == "probabilities" and SPEC.needs == ("generator",)
