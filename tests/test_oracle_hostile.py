"""Probes a hostile attack might run against its oracle; each must fail to break the threat model.

The last test pins the documented limit: in-process introspection of closure cells still reaches
the model (only a separate process would stop that).
"""

from __future__ import annotations

import copy
import gc
import pickle
import re
import threading

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from mibench_lib.models.base import Classifier
from mibench_lib.oracle import AccessDenied, QueryBudgetExceeded, TargetOracle
from mibench_lib.testing import tiny_classifier

BLACK_BOX = ["logits", "probabilities", "top-k", "label"]
ALL_ACCESS = ["white-box", *BLACK_BOX]
SETTINGS = {
    "access": "white-box",
    "budget": None,
    "top_k": 99,
    "postprocess": None,
    "queries": 0,
    "remaining": None,
    "module": None,
    "_gate": None,
    "_model": None,
    "_queries": 0,
    "brand_new": 1,
    "__class__": object,
}


@pytest.fixture
def model() -> Classifier:
    return tiny_classifier(num_classes=6)


@pytest.fixture
def x() -> Tensor:
    return torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _tensors(obj: object) -> list[Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, Tensor)]


class Recorder:
    """Everything a hostile hook saw: the functions and the tensors passed to them."""

    def __init__(self) -> None:
        self.funcs: list[object] = []
        self.tensors: list[Tensor] = []

    def see(self, func: object, args: object, kwargs: object) -> None:
        self.funcs.append(func)
        self.tensors.extend(_tensors((args, kwargs)))

    def assert_saw_nothing_of(self, model: nn.Module, n: int) -> None:
        """No weight, buffer or (n, K) model output among the recorded tensors."""
        secrets = [*model.parameters(), *model.buffers()]
        with torch._C.DisableTorchFunction():
            pointers = {t.untyped_storage().data_ptr() for t in secrets}
            for t in self.tensors:
                assert not isinstance(t, nn.Parameter)
                assert all(t is not s for s in secrets)
                assert tuple(t.shape) != (n, model.num_classes)  # no logits / probabilities
                if type(t) is Tensor:  # the attacker's own subclass instances hold no storage
                    assert t.untyped_storage().data_ptr() not in pointers


def _spy_subclass(rec: Recorder) -> type[Tensor]:
    class Spy(Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            rec.see(func, args, kwargs)
            return super().__torch_function__(func, types, args, kwargs or {})

    return Spy


# -- settings are immutable ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SETTINGS))
def test_assigning_any_attribute_raises(model, name):
    oracle = TargetOracle(model, access="label", budget=3, top_k=2)
    with pytest.raises(AttributeError, match=f"cannot set '{name}'"):
        setattr(oracle, name, SETTINGS[name])
    assert oracle.access == "label" and oracle.budget == 3 and oracle.top_k == 2
    with pytest.raises(AccessDenied):
        _ = oracle.module
    oracle(torch.rand(3, 1, 8, 8))
    with pytest.raises(QueryBudgetExceeded):
        oracle(torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_deleting_any_attribute_raises(model, name):
    oracle = TargetOracle(model, access="label", budget=3)
    with pytest.raises(AttributeError, match=f"cannot delete '{name}'"):
        delattr(oracle, name)
    assert oracle.budget == 3 and oracle(torch.rand(2, 1, 8, 8)).shape == (2,)


def test_reinitialising_raises(model):
    oracle = TargetOracle(model, access="label", budget=3)
    with pytest.raises(TypeError, match="already constructed"):
        TargetOracle.__init__(oracle, model, access="white-box")
    assert oracle.access == "label" and oracle.budget == 3


def test_enforcement_ignores_what_the_class_reports(model, monkeypatch):
    """Rewriting the class's properties changes what the oracle reports, not what it enforces."""
    oracle = TargetOracle(model, access="label", budget=2)
    monkeypatch.setattr(TargetOracle, "access", property(lambda self: "white-box"))
    monkeypatch.setattr(TargetOracle, "budget", property(lambda self: None))
    with pytest.raises(AccessDenied):
        _ = oracle.module
    assert oracle(torch.rand(2, 1, 8, 8)).shape == (2,)  # still a label answer
    with pytest.raises(QueryBudgetExceeded):
        oracle(torch.rand(1, 1, 8, 8))


def test_object_setattr_cannot_add_attributes(model):
    """``object.__setattr__`` bypasses ``__setattr__``, but there is no slot for a setting."""
    oracle = TargetOracle(model, access="label", budget=2)
    for name in ("budget", "_model", "_queries", "__dict__"):
        with pytest.raises(AttributeError):
            object.__setattr__(oracle, name, None)
    assert oracle.budget == 2


@pytest.mark.parametrize("access", ALL_ACCESS)
@pytest.mark.parametrize(
    "probe",
    [
        copy.copy,
        copy.deepcopy,
        pickle.dumps,
        lambda o: o.__reduce__(),
        lambda o: o.__reduce_ex__(2),
        lambda o: o.__getstate__(),
    ],
    ids=["copy", "deepcopy", "pickle", "reduce", "reduce_ex", "getstate"],
)
def test_copying_and_pickling_raise(model, access, probe):
    oracle = TargetOracle(model, access=access, budget=4)
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        probe(oracle)


# -- the model is not reachable through attributes -----------------------------------------------
def _is_model(obj: object, model: nn.Module) -> bool:
    return obj is model or isinstance(obj, nn.Module)


@pytest.mark.parametrize("access", BLACK_BOX)
def test_no_attribute_exposes_the_model(model, access):
    oracle = TargetOracle(model, access=access)
    with pytest.raises(TypeError):
        vars(oracle)
    with pytest.raises(AttributeError):
        _ = oracle.__dict__
    for name in ("_model", "model", "_queries", "_budget"):
        with pytest.raises(AttributeError):
            getattr(oracle, name)
    for name in dir(oracle):
        try:
            value = getattr(oracle, name)
        except AccessDenied:
            assert name == "module"
            continue
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            assert not _is_model(item, model), name
            for inner in item if isinstance(item, tuple) else ():
                assert not _is_model(inner, model), name


@pytest.mark.parametrize("access", BLACK_BOX)
def test_gc_referents_do_not_expose_the_model(model, access):
    oracle = TargetOracle(model, access=access)
    first = gc.get_referents(oracle)
    second = [r for obj in first for r in gc.get_referents(obj)]
    for obj in first + second:
        assert not _is_model(obj, model)


def test_white_box_still_releases_the_module(model):
    assert TargetOracle(model, access="white-box").module is model


# -- queries are plain tensors before the model sees them ----------------------------------------
@pytest.mark.parametrize("access", BLACK_BOX)
def test_tensor_subclass_sees_no_weight_and_no_logits(model, x, access):
    rec = Recorder()
    spy = x.clone().as_subclass(_spy_subclass(rec))
    rec.funcs.clear(), rec.tensors.clear()
    out = TargetOracle(model, access=access, top_k=2)(spy)
    rec.assert_saw_nothing_of(model, len(x))
    assert type(out) is Tensor
    torch.testing.assert_close(out, TargetOracle(model, access=access, top_k=2)(x))


def test_tensor_subclass_cannot_lie_about_the_batch_size(model, x):
    class Liar(Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            out = super().__torch_function__(func, types, args, kwargs or {})
            if func in (Tensor.shape.__get__, Tensor.size):
                return torch.Size([1, *out[1:]])
            return out

    oracle = TargetOracle(model, access="label", budget=10)
    assert oracle(x.clone().as_subclass(Liar)).shape == (5,)
    assert oracle.queries == 5


def test_dispatch_subclass_sees_no_weight_and_no_logits(model, x):
    rec = Recorder()

    class DispatchSpy(Tensor):
        """Wrapper subclass: every aten op on it reaches ``__torch_dispatch__``."""

        elem: Tensor

        @staticmethod
        def __new__(cls, elem: Tensor) -> DispatchSpy:
            wrapper = Tensor._make_wrapper_subclass(
                cls, elem.shape, dtype=elem.dtype, device=elem.device
            )
            wrapper.elem = elem
            return wrapper

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            rec.see(func, args, kwargs)

            def unwrap(t: object) -> object:
                return t.elem if isinstance(t, DispatchSpy) else t

            def wrap(t: object) -> object:
                return DispatchSpy(t) if type(t) is Tensor else t

            args = [unwrap(a) for a in args]
            out = func(*args, **{k: unwrap(v) for k, v in (kwargs or {}).items()})
            return tree_map(wrap, out)  # results stay spies: detach() does not shed the spy

    spy = DispatchSpy(x.clone())
    out = TargetOracle(model, access="label")(spy)
    rec.assert_saw_nothing_of(model, len(x))
    assert type(out) is Tensor and torch.equal(out, TargetOracle(model, access="label")(x))


@pytest.mark.parametrize("access", BLACK_BOX)
def test_torch_function_and_dispatch_modes_see_nothing(model, x, access):
    rec = Recorder()

    class FunctionSpy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            rec.see(func, args, kwargs)
            return func(*args, **(kwargs or {}))

    class DispatchSpy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            rec.see(func, args, kwargs)
            return func(*args, **(kwargs or {}))

    oracle = TargetOracle(model, access=access)
    with FunctionSpy(), DispatchSpy():
        oracle(x)
    rec.assert_saw_nothing_of(model, len(x))
    # the spies work: the same modes around the bare model see its weights
    with FunctionSpy(), torch.no_grad():
        model(x)
    assert any(isinstance(t, nn.Parameter) for t in rec.tensors)


@pytest.mark.parametrize("access", BLACK_BOX)
def test_global_module_hooks_are_not_called(model, x, access):
    seen: list[nn.Module] = []

    def hook(module, args, output):
        seen.append(module)

    pre = nn.modules.module.register_module_forward_pre_hook(lambda m, a: seen.append(m))
    post = nn.modules.module.register_module_forward_hook(hook)
    try:
        TargetOracle(model, access=access)(x)
        assert seen == []
        nn.Identity()(x)  # the hooks are back once the query is over
        assert len(seen) == 2
    finally:
        pre.remove()
        post.remove()
    nn.Identity()(x)
    assert len(seen) == 2


def test_model_receives_a_plain_tensor_without_history(x):
    received: list[Tensor] = []

    class Recording(Classifier):
        def __init__(self) -> None:
            super().__init__(3, 4, (1, 8, 8))
            self.lin = nn.Linear(64, 4)

        def features(self, images: Tensor) -> Tensor:
            received.append(images)
            return self.lin(images.flatten(1))

    rec = Recorder()
    query = x.clone().requires_grad_(True).as_subclass(_spy_subclass(rec))
    TargetOracle(Recording(), access="probabilities")(query)
    (seen,) = received
    assert type(seen) is Tensor and not seen.requires_grad and seen.grad_fn is None
    assert seen.data_ptr() != query.data_ptr()


@pytest.mark.parametrize("access", BLACK_BOX)
def test_black_box_answers_are_plain_and_detached(model, x, access):
    rec = Recorder()
    for query in (x.clone().requires_grad_(True), x.clone().as_subclass(_spy_subclass(rec))):
        out = TargetOracle(model, access=access)(query)
        assert type(out) is Tensor
        assert not out.requires_grad and out.grad_fn is None and not out.is_inference()


def test_gate_refuses_subclasses_when_called_directly(model, x):
    oracle = TargetOracle(model, access="label")
    with pytest.raises(TypeError, match=r"plain torch\.Tensor"):
        oracle._gate.query(x.as_subclass(_spy_subclass(Recorder())))
    assert oracle.queries == 0


def test_white_box_subclass_query_keeps_autograd(model, x):
    rec = Recorder()
    query = x.clone().requires_grad_(True)
    out = TargetOracle(model)(query.as_subclass(_spy_subclass(rec)))
    assert type(out) is Tensor
    out[:, 0].sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0


@pytest.mark.parametrize("access", ALL_ACCESS)
@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 1, 8, 8, dtype=torch.long),
        torch.zeros(2, 1, 8, 8, dtype=torch.bool),
        torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
    ],
    ids=["int64", "bool", "uint8"],
)
def test_non_floating_queries_are_rejected(model, access, bad):
    oracle = TargetOracle(model, access=access, budget=4)
    with pytest.raises(TypeError, match=f"floating-point.*{bad.dtype}"):
        oracle(bad)
    assert oracle.queries == 0


@pytest.mark.parametrize("bad", [[[0.5]], 0.5, "images"])
def test_non_tensor_queries_are_rejected(model, bad):
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        TargetOracle(model, access="label")(bad)


# -- argument validation -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["budget", "top_k"])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (2.5, TypeError),
        (True, TypeError),
        (False, TypeError),
        ("3", TypeError),
        (3.0, TypeError),
        (0, ValueError),
        (-1, ValueError),
    ],
)
def test_budget_and_top_k_must_be_positive_integers(model, name, value, error):
    with pytest.raises(error, match=re.escape(f"{name} must be an integer >= 1, got {value!r}")):
        TargetOracle(model, access="top-k", **{name: value})


@pytest.mark.parametrize("name", ["budget", "top_k"])
def test_numpy_integers_are_accepted(model, name):
    np = pytest.importorskip("numpy")
    oracle = TargetOracle(model, access="top-k", **{name: np.int64(3)})
    assert getattr(oracle, name) == 3 and type(getattr(oracle, name)) is int
    with pytest.raises(TypeError, match="bool"):
        TargetOracle(model, **{name: np.bool_(True)})


def test_postprocess_must_be_callable(model):
    with pytest.raises(TypeError, match="postprocess must be callable"):
        TargetOracle(model, access="probabilities", postprocess=3)


def test_model_must_be_a_classifier_module():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        TargetOracle(lambda images: images)
    with pytest.raises(TypeError, match="'num_classes'"):
        TargetOracle(nn.Linear(2, 2))


# -- charging ------------------------------------------------------------------------------------
class Flaky(Classifier):
    """Counts its forward passes; raises while ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__(3, 4, (1, 8, 8))
        self.lin = nn.Linear(64, 4)
        self.fail = False
        self.calls = 0

    def features(self, images: Tensor) -> Tensor:
        self.calls += 1
        if self.fail:
            raise RuntimeError("target crashed")
        return self.lin(images.flatten(1))


@pytest.mark.parametrize("access", ALL_ACCESS)
def test_a_query_whose_model_raises_is_not_charged(access, x):
    target = Flaky()
    oracle = TargetOracle(target, access=access, budget=5)
    target.fail = True
    with pytest.raises(RuntimeError, match="target crashed"):
        oracle(x)
    assert oracle.queries == 0 and oracle.remaining == 5
    target.fail = False
    oracle(x)
    assert oracle.queries == 5


def test_a_query_whose_defense_raises_is_not_charged(model, x):
    def broken(probs: Tensor) -> Tensor:
        raise RuntimeError("defense crashed")

    oracle = TargetOracle(model, access="probabilities", budget=5, postprocess=broken)
    with pytest.raises(RuntimeError, match="defense crashed"):
        oracle(x)
    assert oracle.queries == 0


@pytest.mark.parametrize("access", ALL_ACCESS)
def test_budget_is_checked_before_the_model_runs(access, x):
    target = Flaky()
    oracle = TargetOracle(target, access=access, budget=7)
    oracle(x[:4])
    assert target.calls == 1
    with pytest.raises(QueryBudgetExceeded, match="4 used \\+ 5 requested > budget 7"):
        oracle(x)
    assert target.calls == 1 and oracle.queries == 4


def test_concurrent_queries_never_exceed_the_budget(model):
    oracle = TargetOracle(model, access="label", budget=10)
    answered: list[int] = []
    refused: list[int] = []

    def attack() -> None:
        try:
            answered.append(len(oracle(torch.rand(2, 1, 8, 8))))
        except QueryBudgetExceeded:
            refused.append(1)

    threads = [threading.Thread(target=attack) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(answered) == oracle.queries == 10 and len(refused) == 3


# -- the documented limit ------------------------------------------------------------------------
def test_closure_introspection_still_reaches_the_model(model):
    """Documented, not prevented: in-process code can walk closure cells (a process would not).

    If this test fails, the oracle has moved the model out of reach: update the module docstring.
    """
    oracle = TargetOracle(model, access="label")
    reached, todo = [], [oracle._gate.query]
    while todo:  # the query function's cells, the cells of the functions in them, ...
        for cell in todo.pop().__closure__ or ():
            value = cell.cell_contents
            reached.append(value)
            if callable(value) and hasattr(value, "__closure__"):
                todo.append(value)
    assert any(value is model for value in reached)


# -- tracebacks ----------------------------------------------------------------------------------
def _frames(err: BaseException | None) -> list:
    """Every frame reachable from ``err``'s traceback, cause and context."""
    frames = []
    while err is not None:
        tb = err.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
    return frames


@pytest.mark.parametrize("access", BLACK_BOX)
def test_tracebacks_do_not_lead_to_the_model(model, x, access):
    target = Flaky()
    target.fail = True
    failing = TargetOracle(target, access=access, budget=5)
    oracle = TargetOracle(model, access=access, budget=5)
    provocations = [
        lambda: failing(x),  # the model raises
        lambda: oracle(x.double()),  # dtype mismatch inside the first layer
        lambda: oracle(torch.rand(6, 1, 8, 8)),  # over budget
        lambda: oracle(x[:, :, :4]),  # wrong shape
        lambda: oracle.module,  # access denied
    ]
    for provoke in provocations:
        with pytest.raises(Exception) as info:
            provoke()
        for frame in _frames(info.value):
            if frame.f_code.co_filename == __file__:
                continue  # this test's own frames hold the models, of course
            for value in frame.f_locals.values():
                assert not isinstance(value, nn.Module), (frame.f_code.co_name, info.value)
    assert failing.queries == oracle.queries == 0
