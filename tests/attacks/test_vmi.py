"""VMI: per-entry flow miners, the Monte-Carlo KL, the official loop, the white-box threat model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mibench_lib.attacks.vmi import (
    OFFICIAL_SETTINGS,
    SPEC,
    _Flows,
    _init_flows,
    _standard_normal_log_prob,
    vmi_attack,
)
from mibench_lib.byo import as_generator
from mibench_lib.oracle import AccessDenied, TargetOracle
from mibench_lib.testing import tiny_classifier, tiny_generator

FLOW = {"steps": 3, "hidden": 16, "coupling": "additive", "permutation": "shuffle"}


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _flows(entries: int = 3, dim: int = 6, *, seed: int = 0, dtype=None, **kw) -> _Flows:
    return _init_flows(
        entries, dim, rng=_rng(seed), dtype=dtype, **{**FLOW, "actnorm": False, **kw}
    )


def _randomise(flows: _Flows, seed: int = 1, scale: float = 0.3) -> _Flows:
    """Non-zero last layers (a fresh flow only permutes), in place; returns the flows."""
    g = _rng(seed)
    for layer in flows.layers:
        for key in ("w3", "b3", "logs3"):
            layer[key] = torch.randn(layer[key].shape, generator=g, dtype=layer[key].dtype) * scale
    return flows


def _kl(flows: _Flows, u: Tensor) -> Tensor:
    """The attack's Monte-Carlo KL(q || N(0, I)) per entry, on base noise ``u`` (E, B, dim)."""
    with torch.no_grad():
        x = flows.sample(u)
        return (flows.log_prob(x) - _standard_normal_log_prob(x)).mean(dim=1)


def _run(target=None, labels=(0, 1), *, generator=None, seed: int = 0, **kw):
    kw = {"iterations": 3, "samples_per_step": 4, "samples": 3, "hidden": 16, **kw}
    return vmi_attack(
        TargetOracle(target if target is not None else tiny_classifier()),
        torch.tensor(labels),
        generator=generator if generator is not None else tiny_generator(),
        rng=_rng(seed),
        **kw,
    )


# -- the feature: a distribution of label-like samples, better than random latents ----------------
def test_beats_random_latents_with_diverse_samples(digits_target, digits_generator, label_prob):
    labels = torch.arange(4)
    res = _run(
        digits_target,
        (0, 1, 2, 3),
        generator=digits_generator,
        iterations=30,
        samples_per_step=16,
        lr=0.01,
        samples=32,
        hidden=100,
    )
    with torch.no_grad():
        random_images = digits_generator(torch.randn(4 * 32, 8, generator=_rng(9)))
    p_attack = label_prob(digits_target, res.images, res.labels)
    p_random = label_prob(digits_target, random_images, res.labels)
    # measured: 0.99 against 0.26 (the official lr 2e-4 needs about the official 3140 steps)
    assert p_attack.mean() > p_random.mean() + 0.4
    torch.testing.assert_close(res.extras["target_prob"], p_attack)
    assert res.losses[-1] < 0.5 * res.losses[0]
    assert res.extras["target_acc"][-1] > res.extras["target_acc"][0]
    # a distribution, not a point: every entry's samples spread in the target's feature space
    # (measured: mean per-feature std 0.09 to 0.16 per entry; latent std >= 0.82)
    with torch.no_grad():
        feats = digits_target.features(res.images).view(32, 4, -1)  # sample-major
    assert (feats.std(dim=0).mean(dim=1) > 0.02).all()
    assert (res.latents.view(32, 4, 8).std(dim=0) > 0.1).all()
    assert torch.equal(res.labels, labels.repeat(32))


def test_kl_weight_pulls_the_miner_towards_the_prior(digits_target, digits_generator):
    kw = {"iterations": 20, "samples_per_step": 8, "lr": 0.01, "samples": 64}
    runs = {
        w: _run(digits_target, (0, 1), generator=digits_generator, lambda_kl=w, **kw)
        for w in (0.0, 1.0)
    }
    assert runs[0.0].extras["kl_loss"][0] == runs[1.0].extras["kl_loss"][0]  # same start
    assert abs(runs[0.0].extras["kl_loss"][0]) < 1e-5  # fresh flows: q = N(0, I)
    # measured: final KL 68.8 / 13.9 without the term, 2.5 / 0.17 with weight 1
    assert (runs[1.0].extras["kl"] < 0.25 * runs[0.0].extras["kl"]).all()


# -- the flows: KL estimate, change of variables, independence -------------------------------------
def test_identity_flow_has_zero_kl():
    # fresh flows have zero last layers: two reversals make the identity
    flows = _flows(2, 8, steps=2, permutation="reverse")
    u = torch.randn(2, 2000, 8, generator=_rng(1))
    assert torch.equal(flows.sample(u), u)
    assert _kl(flows, u).abs().max() < 0.05
    # with shuffles a fresh flow permutes the coordinates: q is still N(0, I)
    flows = _flows(2, 8)
    x = flows.sample(u)
    assert torch.equal(x.sort(dim=-1).values, u.sort(dim=-1).values) and not torch.equal(x, u)
    assert _kl(flows, u).abs().max() < 1e-5


def test_pure_shift_has_kl_half_squared_norm():
    flows = _flows(2, 6, steps=2, permutation="reverse")  # the identity but for the shifts
    g = _rng(2)
    for layer in flows.layers:  # constant coupling outputs: every step shifts one half
        layer["b3"] = torch.randn(layer["b3"].shape, generator=g)
    u = torch.randn(2, 2000, 6, generator=_rng(3))
    shift = flows.sample(u) - u
    b = shift[:, 0]
    torch.testing.assert_close(shift, b[:, None].expand_as(shift), rtol=0, atol=1e-5)
    assert (b.abs() > 0).all()  # reaches every coordinate (both halves, through permutations)
    expected = 0.5 * (b * b).sum(dim=1)
    # the estimate is 0.5 |b|^2 + mean(u . b): standard error |b| / sqrt(2000)
    tol = 4 * b.norm(dim=1) / math.sqrt(2000)
    assert ((_kl(flows, u) - expected).abs() < tol).all()
    assert (expected > 5 * tol).all()


def test_affine_scale_and_shift_match_the_gaussian_kl():
    flows = _flows(1, 2, steps=1, coupling="affine", permutation="reverse")
    flows.layers[0]["b3"] = torch.tensor([[0.7, -1.5]])  # shift t = 0.7, scale sigmoid(0.5)
    u = torch.randn(1, 20000, 2, generator=_rng(4))
    x = flows.sample(u)
    # reverse permutation: x = (x_0, x_1) <- (z_1, z_0) with z_0 the coupled half
    sigma = 1 / torch.sigmoid(torch.tensor(0.5))
    torch.testing.assert_close(x[..., 0], u[..., 1] * sigma - 0.7, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x[..., 1], u[..., 0], rtol=0, atol=0)
    # KL(N(-0.7, sigma^2) || N(0, 1)) in the coupled coordinate, 0 in the other
    exact = 0.5 * (sigma**2 + 0.7**2 - 1) - torch.log(sigma)
    assert abs(float(_kl(flows, u)[0]) - float(exact)) < 0.03


@pytest.mark.parametrize("coupling", ["additive", "affine"])
@pytest.mark.parametrize("actnorm", [False, True])
def test_log_prob_is_the_change_of_variables_of_a_numerical_jacobian(coupling, actnorm):
    flows = _randomise(
        _flows(2, 2, dtype=torch.float64, coupling=coupling, actnorm=actnorm, steps=4)
    )
    x = torch.randn(2, 5, 2, generator=_rng(5), dtype=torch.float64)
    u, logdet = flows.encode(x)
    torch.testing.assert_close(flows.sample(u), x, rtol=0, atol=1e-10)  # exact inverse
    eps = 1e-6
    for e in range(2):
        for i in range(5):
            cols = []
            for j in range(2):
                d = torch.zeros(2, 5, 2, dtype=torch.float64)
                d[e, i, j] = eps
                cols.append((flows.encode(x + d)[0] - flows.encode(x - d)[0])[e, i] / (2 * eps))
            jac_logdet = torch.linalg.slogdet(torch.stack(cols, dim=1))[1]
            assert abs(float(logdet[e, i] - jac_logdet)) < 1e-5
            expected = _standard_normal_log_prob(u[e, i]) + jac_logdet
            assert abs(float(flows.log_prob(x)[e, i] - expected)) < 1e-5
    if coupling == "affine" or actnorm:
        assert logdet.abs().max() > 1e-2  # a volume change was actually tested
    else:
        assert logdet.abs().max() == 0  # additive coupling preserves volume


def test_perturbing_one_entry_changes_only_its_samples():
    flows = _randomise(_flows(3, 6))
    u = torch.randn(3, 50, 6, generator=_rng(6))
    before, lq_before = flows.sample(u), flows.log_prob(u)
    for layer in flows.layers:
        for key in layer:
            layer[key] = layer[key].clone()
            layer[key][1] += 0.05
    after, lq_after = flows.sample(u), flows.log_prob(u)
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert torch.equal(lq_after[0], lq_before[0]) and torch.equal(lq_after[2], lq_before[2])
    assert (after[1] - before[1]).abs().min() > 0
    assert not torch.equal(lq_after[1], lq_before[1])


def test_every_coordinate_is_transformed():
    # The official MLP step "reverses" with Permute(shuffle=False), i.e. arange(d): its flow
    # never touches the first half of the latent. Each permutation here is a real one.
    for permutation in ("shuffle", "reverse"):
        flows = _randomise(_flows(2, 6, permutation=permutation))
        u = torch.randn(2, 40, 6, generator=_rng(7))
        assert ((flows.sample(u) - u).abs().amin(dim=1) > 0).all()
    flows = _flows(4, 6, permutation="shuffle")
    assert not all(torch.equal(p[0], p[1]) for p in flows.perm)  # one per entry
    assert all(torch.equal(p.sort(dim=1).values, torch.arange(6).expand(4, 6)) for p in flows.perm)


def test_actnorm_is_fitted_on_100_standard_normal_latents():
    g = _rng(8)
    flows = _init_flows(2, 6, rng=g, **{**FLOW, "actnorm": True})
    # the draws: per step a permutation and the two hidden layers, then the 100 latents
    g = _rng(8)
    _init_flows(2, 6, rng=g, **{**FLOW, "actnorm": False})
    x = torch.randn(2, 100, 6, generator=g)
    for layer, perm in zip(flows.layers, flows.perm, strict=True):
        out = (x + layer["an_bias"][:, None]) * layer["an_logs"].exp()[:, None]
        torch.testing.assert_close(out.mean(dim=1), torch.zeros(2, 6), rtol=0, atol=1e-5)
        torch.testing.assert_close(
            out.var(dim=1, unbiased=False), torch.ones(2, 6), atol=1e-4, rtol=0
        )
        x = out.gather(2, perm[:, None].expand_as(out))  # zero coupling at initialisation


# -- the official loop, entry by entry --------------------------------------------------------------
def _reference_sample(layer_list, perms, u):
    """One entry's additive MLP flow, inverted step by step with plain indexing and F.linear."""
    d1 = u.shape[1] // 2
    x = u
    for layer, perm in zip(reversed(layer_list), reversed(perms), strict=True):
        h = F.elu(F.linear(x[:, :d1], layer["w1"].T, layer["b1"]))
        h = F.elu(F.linear(h, layer["w2"].T, layer["b2"]))
        m = F.linear(h, layer["w3"].T, layer["b3"]) * torch.exp(3 * layer["logs3"])
        x = torch.cat((x[:, :d1], x[:, d1:] - m), dim=1)
        x = x[:, torch.argsort(perm)]
    return x


def _reference_log_prob(layer_list, perms, x):
    d1 = x.shape[1] // 2
    for layer, perm in zip(layer_list, perms, strict=True):
        x = x[:, perm]
        h = F.elu(F.linear(x[:, :d1], layer["w1"].T, layer["b1"]))
        h = F.elu(F.linear(h, layer["w2"].T, layer["b2"]))
        m = F.linear(h, layer["w3"].T, layer["b3"]) * torch.exp(3 * layer["logs3"])
        x = torch.cat((x[:, :d1], x[:, d1:] + m), dim=1)
    return -0.5 * (x * x).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def test_matches_separate_official_runs_per_entry(digits_target, digits_generator):
    """Batched entries = one official run each: its own miner, SGD(momentum 0.9), loss
    lambda_attack * mean NLL + lambda_kl * mean(log q - log N) on a second fresh batch."""
    labels, b, steps, d = torch.tensor([1, 3]), 6, 4, 8
    kw = {"lr": 0.02, "lambda_kl": 0.5, "flow_steps": 3, "hidden": 16}
    res = vmi_attack(
        TargetOracle(digits_target),
        labels,
        generator=digits_generator,
        iterations=steps,
        samples_per_step=b,
        samples=5,
        rng=_rng(11),
        **kw,
    )
    g = _rng(11)
    flows = _init_flows(
        2, d, steps=3, hidden=16, coupling="additive", permutation="shuffle", actnorm=False, rng=g
    )
    entries = [
        [{k: t[e].clone().requires_grad_(True) for k, t in layer.items()} for layer in flows.layers]
        for e in range(2)
    ]
    perms = [[p[e] for p in flows.perm] for e in range(2)]
    opts = [
        torch.optim.SGD([t for layer in ent for t in layer.values()], lr=0.02, momentum=0.9)
        for ent in entries
    ]
    for _ in range(steps):
        u, u_kl = torch.randn(2, b, d, generator=g), torch.randn(2, b, d, generator=g)
        for e in range(2):
            opts[e].zero_grad()
            z = _reference_sample(entries[e], perms[e], u[e])
            lsm = F.log_softmax(digits_target(digits_generator(z)), dim=1)
            attack = -lsm[:, labels[e]].mean()
            zk = _reference_sample(entries[e], perms[e], u_kl[e])
            kl = (
                _reference_log_prob(entries[e], perms[e], zk)
                - (-0.5 * (zk * zk).sum(1) - 0.5 * d * math.log(2 * math.pi))
            ).mean()
            (attack + 0.5 * kl).backward()
            opts[e].step()
    u = torch.randn(2, 5, d, generator=g)
    with torch.no_grad():
        z = torch.stack([_reference_sample(entries[e], perms[e], u[e]) for e in range(2)])
    torch.testing.assert_close(res.latents, z.transpose(0, 1).reshape(10, d), rtol=1e-4, atol=1e-5)


def test_label_smoothing_is_the_official_loss(digits_target, digits_generator):
    labels, b = torch.tensor([0, 2]), 5
    res = _run(
        digits_target,
        (0, 2),
        generator=digits_generator,
        iterations=1,
        samples_per_step=b,
        label_smoothing=0.3,
    )
    g = _rng(0)  # replay the draws: fresh flows (permutations), then the first attack batch
    flows = _init_flows(
        2, 8, steps=5, hidden=16, coupling="additive", permutation="shuffle", actnorm=False, rng=g
    )
    with torch.no_grad():
        z = flows.sample(torch.randn(2, b, 8, generator=g)).reshape(2 * b, 8)
        lsm = F.log_softmax(digits_target(digits_generator(z)), dim=1)
    y = labels.repeat_interleave(b)
    true = torch.full_like(lsm, 0.3 / 3).scatter_(1, y[:, None], 0.7)
    expected = (-(true * lsm).sum(1)).view(2, b).mean(1).mean()
    assert res.extras["attack_loss"][0] == pytest.approx(float(expected), rel=1e-5)


# -- shapes, queries, threat model, determinism -------------------------------------------------
def test_shapes_layout_and_exact_queries():
    calls = []
    oracle = TargetOracle(tiny_classifier())
    res = vmi_attack(
        oracle,
        torch.tensor([3, 0, 3]),
        generator=tiny_generator(),
        iterations=12,
        samples_per_step=4,
        samples=5,
        hidden=16,
        rng=_rng(0),
        on_step=lambda s, t, info: calls.append((s, t, info)),
    )
    assert res.attack == "vmi" and res.images.shape == (15, 1, 8, 8)
    assert res.queries == oracle.queries == (12 * 4 + 5) * 3
    assert res.labels.tolist() == [3, 0, 3] * 5  # sample-major
    assert res.extras["entry"].tolist() == [0, 1, 2] * 5
    assert res.extras["sample"].tolist() == [s for s in range(5) for _ in range(3)]
    assert res.latents.shape == (15, 8) and res.extras["kl"].shape == (3,)
    assert len(res.losses) == len(res.extras["kl_loss"]) == 12
    assert 0 <= float(res.images.min()) <= float(res.images.max()) <= 1
    assert [c[0] for c in calls] == [10, 12] and all(c[1] == 12 for c in calls)
    assert all(isinstance(v, float) for c in calls for v in c[2].values())
    # repeated labels are independent runs: their own flows and noise
    assert not torch.equal(res.latents[0], res.latents[2])


def test_zero_iterations_sample_the_prior_and_score_them():
    target, gen = tiny_classifier(), tiny_generator()
    res = _run(target, (1, 2), generator=gen, iterations=0, samples=4)
    assert res.losses == [] and res.queries == 8
    assert res.extras["kl"].abs().max() < 1e-5  # fresh flows: q = N(0, I)
    with torch.no_grad():
        p = F.softmax(target(gen(res.latents)), dim=1).gather(1, res.labels[:, None])[:, 0]
    torch.testing.assert_close(res.extras["target_prob"], p)


def test_chunked_batches_give_the_same_search(digits_target, digits_generator):
    kw = {"iterations": 4, "samples_per_step": 6, "lr": 0.02, "samples": 4}
    whole = _run(digits_target, (0, 1, 2), generator=digits_generator, **kw)
    chunked = _run(digits_target, (0, 1, 2), generator=digits_generator, batch_size=5, **kw)
    torch.testing.assert_close(chunked.latents, whole.latents, rtol=1e-4, atol=1e-5)
    assert chunked.queries == whole.queries


@pytest.mark.parametrize("access", ["logits", "probabilities", "label"])
def test_refuses_non_white_box_oracle(access):
    oracle = TargetOracle(tiny_classifier(), access=access)
    with pytest.raises(AccessDenied, match="white-box"):
        vmi_attack(oracle, torch.tensor([0]), generator=tiny_generator())
    assert oracle.queries == 0


def test_frozen_networks_unchanged(buffer_hash):
    target, gen = tiny_classifier(), tiny_generator()
    gen.train()  # the caller's mode comes back; the attack itself runs G in eval mode
    before = buffer_hash(target, gen)
    _run(target, (0, 1), generator=gen, iterations=4)
    assert buffer_hash(target, gen) == before
    assert gen.training and not target.training
    assert all(p.grad is None for p in [*target.parameters(), *gen.parameters()])


def test_same_rng_same_result_different_rng_different():
    a, b, c = (_run(seed=s, iterations=5) for s in (0, 0, 1))
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert a.losses == b.losses
    assert not torch.equal(a.latents, c.latents)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": -1}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"samples_per_step": 0}, "samples_per_step"),
        ({"samples": 0}, "samples"),
        ({"flow_steps": 0}, "flow_steps"),
        ({"hidden": 0}, "hidden"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"lambda_attack": -1.0}, "lambda_attack"),
        ({"lambda_kl": -1e-3}, "lambda_kl"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"coupling": "invconv"}, "coupling"),
        ({"permutation": "identity"}, "permutation"),
        ({"actnorm": 1}, "actnorm"),
    ],
)
def test_bad_arguments_raise_before_any_query(kwargs, match):
    oracle = TargetOracle(tiny_classifier())
    with pytest.raises(ValueError, match=match):
        vmi_attack(oracle, torch.tensor([0]), generator=tiny_generator(), **kwargs)
    assert oracle.queries == 0


def test_bad_labels_and_one_dimensional_latents_raise():
    oracle = TargetOracle(tiny_classifier())
    with pytest.raises(ValueError, match="labels"):
        vmi_attack(oracle, torch.tensor([4]), generator=tiny_generator())
    one = torch.nn.Sequential(
        torch.nn.Linear(1, 64), torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Sigmoid()
    )
    with pytest.raises(ValueError, match="latent_dim must be >= 2"):
        vmi_attack(oracle, torch.tensor([0]), generator=as_generator(one, latent_dim=1))
    assert oracle.queries == 0


def test_defaults_are_the_official_dcgan_settings():
    import inspect

    params = inspect.signature(vmi_attack).parameters
    defaults = {k: params[k].default for k in OFFICIAL_SETTINGS["dcgan_argparse"]}
    # every default is the DCGAN script's but the KL weight (run script 1e-3; argparse 0)
    assert {**defaults, "lambda_kl": 0.0} == OFFICIAL_SETTINGS["dcgan_argparse"]
    assert defaults["lambda_kl"] == OFFICIAL_SETTINGS["stylegan_run_script"]["lambda_kl"] == 1e-3
    assert params["samples"].default == 50 and params["iterations"].default == 20 * 157
    assert SPEC.name == "vmi" and SPEC.access == "white-box" and SPEC.needs == ("generator",)
