import pytest
import torch
import torch.nn.functional as F

from mibench_lib.oracle import AccessDenied, QueryBudgetExceeded, TargetOracle
from mibench_lib.testing import tiny_classifier


@pytest.fixture
def model():
    return tiny_classifier(num_classes=6)


@pytest.fixture
def x():
    return torch.rand(5, 1, 8, 8)


def test_white_box_returns_logits_with_graph(model, x):
    oracle = TargetOracle(model, access="white-box")
    xr = x.clone().requires_grad_(True)
    out = oracle(xr)
    torch.testing.assert_close(out, model(x))
    out[:, 0].sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert oracle.module is model


@pytest.mark.parametrize("access", ["logits", "probabilities", "top-k", "label"])
def test_black_box_has_no_gradient_path_and_no_module(model, x, access):
    oracle = TargetOracle(model, access=access, top_k=2)
    xr = x.clone().requires_grad_(True)
    out = oracle(xr)
    assert not out.requires_grad and out.grad_fn is None
    with pytest.raises(AccessDenied, match="white-box only"):
        _ = oracle.module
    # the released tensor is an ordinary tensor: usable in an attacker's own graph
    w = torch.ones((), requires_grad=True)
    (w * out.float()).sum().backward()
    assert w.grad is not None


def test_released_values_match_their_definition(model, x):
    logits = model(x).detach()
    probs = F.softmax(logits, 1)
    torch.testing.assert_close(TargetOracle(model, access="logits")(x), logits)
    torch.testing.assert_close(TargetOracle(model, access="probabilities")(x), probs)
    top2 = TargetOracle(model, access="top-k", top_k=2)(x)
    assert ((top2 > 0).sum(1) == 2).all()
    assert torch.equal(top2.argmax(1), probs.argmax(1))
    torch.testing.assert_close(top2.sum(1), probs.topk(2, 1).values.sum(1))
    labels = TargetOracle(model, access="label")(x)
    assert labels.dtype == torch.int64 and labels.shape == (5,)
    assert torch.equal(labels, logits.argmax(1))


@pytest.mark.parametrize("access", ["white-box", "logits", "probabilities", "top-k", "label"])
def test_queries_counted_and_budget_enforced(model, x, access):
    oracle = TargetOracle(model, access=access, budget=12)
    oracle(x)
    oracle(x)
    assert oracle.queries == 10 and oracle.remaining == 2
    with pytest.raises(QueryBudgetExceeded, match="10 used \\+ 5 requested > budget 12"):
        oracle(x)
    assert oracle.queries == 10  # the refused batch was not charged
    oracle(x[:2])
    assert oracle.queries == 12


def test_postprocess_applies_to_black_box_only(model, x):
    def rounder(p):
        return torch.round(p * 10) / 10

    bb = TargetOracle(model, access="probabilities", postprocess=rounder)(x)
    assert torch.allclose(bb * 10, torch.round(bb * 10))
    wb = TargetOracle(model, access="white-box", postprocess=rounder)(x)
    torch.testing.assert_close(wb, model(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"access": "grey-box"}, "access must be one of"),
        ({"budget": 0}, "budget"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k must be an integer >= 1, got -2"),
        ({"budget": -1}, "budget must be an integer >= 1, got -1"),
    ],
)
def test_bad_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TargetOracle(model, **kwargs)


def test_wrong_query_shape(model):
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        TargetOracle(model, access="label")(torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize(("kwargs", "match"), [({"budget": 2.5}, "2.5"), ({"top_k": True}, "True")])
def test_non_integer_budget_and_top_k_are_type_errors(model, kwargs, match):
    with pytest.raises(TypeError, match=match):
        TargetOracle(model, **kwargs)


def test_settings_are_reported(model):
    def rounder(p):
        return torch.round(p * 10) / 10

    oracle = TargetOracle(model, access="top-k", budget=7, top_k=3, postprocess=rounder)
    assert (oracle.access, oracle.budget, oracle.top_k) == ("top-k", 7, 3)
    assert oracle.postprocess is rounder and not oracle.is_white_box
    assert oracle.num_classes == 6 and oracle.input_shape == (1, 8, 8)
    assert oracle.device == torch.device("cpu")
    assert (oracle.queries, oracle.remaining) == (0, 7)
    assert repr(oracle) == "TargetOracle(access='top-k', queries=0, budget=7)"
    unlimited = TargetOracle(model)
    assert unlimited.is_white_box and unlimited.budget is None and unlimited.remaining is None


def test_black_box_answers_depend_only_on_the_query_values(model, x):
    """Black-box queries are copied into fresh tensors: only their values count."""
    oracle = TargetOracle(model, access="logits")
    torch.testing.assert_close(oracle(x), model(x).detach())
    torch.testing.assert_close(oracle(x.clone().requires_grad_(True)), model(x).detach())
