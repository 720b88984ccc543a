"""The threat-model oracle: the only door through which an attack reaches a target model.

A released model is reached at one of five access levels:

============== ===================================================================
access          what a query returns
============== ===================================================================
white-box       logits with the autograd graph; ``oracle.module`` gives the model
logits          detached logits
probabilities   detached softmax probabilities
top-k           detached probabilities with all but the ``top_k`` largest set to 0
label           detached int64 predicted labels, shape (N,)
============== ===================================================================

Every image sent counts as one query, at every access level. A ``budget`` caps the count: the
query that would exceed it raises :class:`QueryBudgetExceeded` before the model runs, and a query
is charged only once the oracle has answered it (a model or defense that raises costs nothing).
Black-box answers are computed without autograd and returned as fresh, plain, detached tensors,
so no gradient path leads back into the model. Output-processing defenses plug in as
``postprocess``: a function applied to the released probabilities before the access level
truncates them (white-box callers bypass it by definition).

Attacks are third-party code, so the oracle defends its threat model against the attack itself:

* Its settings (``access``, ``budget``, ``top_k``, ``postprocess``) are fixed at construction:
  assigning or deleting any attribute raises :class:`AttributeError`, an oracle cannot be
  re-initialised, copied or pickled (:class:`TypeError`), and the query counter can only grow.
* The model is held only inside a closure built by the constructor. The oracle object has no
  ``__dict__`` and no attribute that holds the model: ``vars(oracle)``, ``dir(oracle)``,
  ``oracle._model`` and ``gc.get_referents(oracle)`` never yield the ``nn.Module`` (only
  ``oracle.module`` does, and only at white-box access, where the attacker holds it anyway).
  The checks (access level, budget) run inside that closure on the values captured at
  construction, so even ``object.__setattr__`` on the instance, or replacing properties on the
  class, changes at most what the oracle *reports*, never what it enforces.
* A black-box query is copied into a fresh plain ``torch.Tensor`` (zero-filled, then filled from
  the query with autograd off and every ``__torch_function__`` override disabled) before the
  model sees it, and the model and the defense then run with ``__torch_function__`` subclasses
  and modes disabled, Python ``__torch_dispatch__`` handlers (subclasses and modes) excluded,
  and the global ``nn.Module`` hooks (``register_module_forward_hook`` and friends) suspended.
  A hostile tensor subclass or mode therefore never sees a weight, an activation or the logits.
* A black-box oracle's errors (budget exceeded, access denied, a failing model or defense) are
  raised from frames that do not hold the model; a failure inside the model or the defense is
  re-raised as a fresh exception of the same type and message, without the original traceback.

What this does *not* guarantee: the model lives in the attack's own Python process, and
in-process code can always reach it with deeper introspection, namely walking a function's
``__closure__`` cells, ``gc.get_objects()``, frames of other threads (``sys._current_frames``),
``sys.settrace`` / ``sys.setprofile``, ``ctypes``, writing a closure cell, or monkeypatching
``torch``, its kernels (``torch.library``) or the model's classes. These controls make the threat
model explicit and stop accidental or casual breaches; only serving the model from a separate
process (which this module does not do) would stop a determined attacker. The global module hooks
are suspended process-wide while a black-box forward runs: modules in other threads do not call
them meanwhile, and a global hook should not be removed from another thread during a query (it
would come back when the suspension ends).
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _nn_module

Access = Literal["white-box", "logits", "probabilities", "top-k", "label"]
ACCESS_LEVELS: tuple[str, ...] = ("white-box", "logits", "probabilities", "top-k", "label")

# Dispatch keys whose handlers run Python code (tensor subclasses' and modes'
# ``__torch_dispatch__``); excluded while the target runs on a black-box query.
_PYTHON_KEYS = (
    torch._C.DispatchKeySet(torch._C.DispatchKey.Python)
    | torch._C.DispatchKeySet(torch._C.DispatchKey.PythonTLSSnapshot)
    | torch._C.DispatchKeySet(torch._C.DispatchKey.PreDispatch)
)
# ``torch.nn.modules.module`` globals read by ``Module.__call__``: hooks every module calls.
_GLOBAL_HOOK_DICTS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
)


class QueryBudgetExceeded(RuntimeError):
    """A query would take the oracle past its query budget."""


class AccessDenied(PermissionError):
    """The caller asked for something its access level does not release."""


class _Settings(NamedTuple):
    """What every attacker may know about the oracle (immutable)."""

    access: str
    budget: int | None
    top_k: int
    postprocess: Callable[[Tensor], Tensor] | None
    num_classes: int
    input_shape: tuple[int, ...]


class _Gate(NamedTuple):
    """The closures through which the oracle reaches its model (the model is in their cells)."""

    settings: _Settings
    query: Callable[[Tensor], Tensor]
    queries: Callable[[], int]
    device: Callable[[], torch.device]
    module: Callable[[], nn.Module]


def _positive_int(name: str, value: object) -> int:
    """``value`` as a plain ``int`` >= 1 (Python or NumPy integers; bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class _GlobalHookSuspension:
    """Empties the process-wide ``nn.Module`` hook dictionaries while any black-box forward runs.

    Those hooks receive every module (with its weights) and every activation. The dictionaries
    are emptied and refilled in place, so every hook handle stays valid; overlapping forwards (in
    several threads) share one suspension, and hooks registered meanwhile are kept, after the
    suspended ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: dict[str, dict[Any, Any]] = {}

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                for name in _GLOBAL_HOOK_DICTS:
                    hooks = getattr(_nn_module, name, None)
                    if isinstance(hooks, dict) and hooks:
                        self._saved[name] = dict(hooks)
                        hooks.clear()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for name, saved in self._saved.items():
                        hooks = getattr(_nn_module, name)
                        added = dict(hooks)
                        hooks.clear()
                        hooks.update(saved)
                        hooks.update(added)
                    self._saved.clear()


_no_global_module_hooks = _GlobalHookSuspension()


@contextlib.contextmanager
def _sealed() -> Iterator[None]:
    """No Python code but the model's and the defense's runs on tensors inside this block."""
    with (
        torch._C.DisableTorchFunction(),
        torch._C._ExcludeDispatchKeyGuard(_PYTHON_KEYS),
        _no_global_module_hooks(),
    ):
        yield


def _check_tensor(images: object) -> None:
    if not issubclass(type(images), Tensor):
        raise TypeError(f"queries must be a torch.Tensor, got {type(images).__name__}")


def _check_dtype(images: Tensor) -> None:
    if not images.dtype.is_floating_point:
        raise TypeError(f"queries must be a floating-point tensor, got dtype {images.dtype}")


def _plain_copy(images: Tensor, device: torch.device) -> Tensor:
    """A fresh plain, detached tensor on ``device`` holding ``images``' values.

    Only ``images``' own ``__torch_dispatch__`` (if any) may run here, and it sees nothing but
    ``images`` and a zero-filled buffer; every ``__torch_function__`` override is disabled.
    """
    _check_tensor(images)
    with torch._C.DisableTorchFunction(), torch.no_grad():
        _check_dtype(images)
        buffer = torch.zeros(tuple(images.shape), dtype=images.dtype, device=device)
        buffer.copy_(images)
    # copy again, with every Python handler excluded, so that nothing the query's code may have
    # kept a reference to (or done to ``buffer``) reaches the model.
    with _sealed(), torch.no_grad():
        return buffer.clone()


def _plain_view(images: Tensor) -> Tensor:
    """``images`` as a plain ``torch.Tensor`` that stays attached to the autograd graph."""
    _check_tensor(images)
    if type(images) is Tensor:
        return images
    with torch._C.DisableTorchFunctionSubclass():
        return images.as_subclass(Tensor)


def _release(
    logits: Tensor, access: str, top_k: int, postprocess: Callable[[Tensor], Tensor] | None
) -> Tensor:
    """What a black-box oracle at ``access`` releases for ``logits``."""
    if postprocess is None and access == "logits":
        return logits.float()
    probs = F.softmax(logits.float(), dim=1)
    if postprocess is not None:
        probs = postprocess(probs)
    if access == "logits":
        return probs.clamp_min(1e-30).log()
    if access == "probabilities":
        return probs
    if access == "top-k":
        k = min(top_k, probs.shape[1])
        vals, idx = probs.topk(k, dim=1)
        return torch.zeros_like(probs).scatter_(1, idx, vals)
    return probs.argmax(dim=1)


def _model_device(model: nn.Module) -> torch.device:
    # even reading ``.device`` hands the tensor to any active ``__torch_function__`` mode
    with torch._C.DisableTorchFunction():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device("cpu")


def _detached_error(err: Exception) -> Exception:
    """A fresh exception with ``err``'s type and message, and no traceback, cause or context.

    The original traceback's frames hold the model (the gate's cells, ``self`` in every layer's
    ``forward``); the fresh exception is raised from frames that do not.
    """
    message = str(err)
    try:
        return type(err)(message)
    except Exception:  # an exception type that cannot be rebuilt from its message alone
        return RuntimeError(f"{type(err).__name__}: {message}")


def _make_gate(model: nn.Module, settings: _Settings) -> _Gate:
    """Build the closures that hold ``model``: the only references the oracle keeps to it.

    Only ``forward``, ``device`` and (at white-box access) ``module`` name the model, so only
    their frames hold it; at black-box access none of them lets an exception out, so no
    traceback an attacker can catch leads to a frame holding the model.
    """
    access, budget, top_k, postprocess, _, input_shape = settings
    lock = threading.RLock()
    count = 0

    def device() -> torch.device:
        return _model_device(model)

    if access == "white-box":

        def forward(images: Tensor) -> tuple[Tensor | None, Exception | None]:
            # the attacker holds the model: autograd graph kept, errors propagate as they are
            return model(images.to(_model_device(model))), None

        def module() -> nn.Module:
            return model

    else:

        def forward(images: Tensor) -> tuple[Tensor | None, Exception | None]:
            try:
                with _sealed():
                    with torch.inference_mode():
                        out = _release(model(images), access, top_k, postprocess)
                    # clone outside inference mode: an ordinary tensor that attackers may use
                    # freely, carrying no autograd history back into the target.
                    out = out.clone()
            except Exception as err:  # the target or the defense failed: hand back no frame
                return None, _detached_error(err)
            return out, None

        def module() -> nn.Module:
            raise AccessDenied(f"a {access!r} oracle does not release the model; white-box only")

    def queries() -> int:
        return count

    def query(images: Tensor) -> Tensor:
        nonlocal count
        if type(images) is not Tensor or torch._C._dispatch_keys(images).has(
            torch._C.DispatchKey.Python
        ):
            raise TypeError(
                "queries reaching the target must be plain torch.Tensor without a "
                f"__torch_dispatch__ handler, got {type(images).__name__}"
            )
        _check_dtype(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != input_shape:
            raise ValueError(
                f"queries must have shape (N, {', '.join(map(str, input_shape))}), "
                f"got {tuple(images.shape)}"
            )
        n = int(images.shape[0])
        with lock:
            if budget is not None and count + n > budget:
                raise QueryBudgetExceeded(
                    f"query budget exhausted: {count} used + {n} requested > budget {budget}"
                )
            out, error = forward(images)
            if error is not None:
                raise error
            count += n  # charged only once the query has been answered
        return out  # type: ignore[return-value]

    return _Gate(settings, query, queries, device, module)


class TargetOracle:
    """Access-controlled, query-counting view of a target classifier.

    The settings are fixed at construction and the model is reachable only through the oracle's
    queries (and :attr:`module` at white-box access); see the module docstring for what this
    does and does not guarantee against hostile attack code.

    Args:
        model: The target classifier, (N, C, H, W) in [0, 1] -> (N, K) logits, with
            ``num_classes`` and ``input_shape`` attributes. Put in eval mode.
        access: One of :data:`ACCESS_LEVELS`.
        budget: Maximum number of images the oracle answers in total (an integer >= 1; NumPy
            integers are accepted, bools are not); ``None`` for no limit.
        top_k: Number of probabilities released at access ``"top-k"`` (an integer >= 1).
        postprocess: Output defense, (N, K) probabilities -> (N, K) probabilities, applied to every
            black-box answer (``"logits"`` access then releases the log of the processed
            probabilities). Ignored at white-box access, where the attacker holds the model.

    Raises:
        ValueError: unknown access level, a budget or ``top_k`` below 1.
        TypeError: ``model`` is not an ``nn.Module`` with ``num_classes`` and ``input_shape``; a
            budget or ``top_k`` that is not an integer (e.g. ``2.5`` or ``True``); a
            ``postprocess`` that is not callable.

    Example:
        >>> from mibench_lib.testing import tiny_classifier
        >>> oracle = TargetOracle(tiny_classifier(), access="label", budget=10)
        >>> oracle(torch.rand(4, 1, 8, 8)).dtype, oracle.queries
        (torch.int64, 4)
        >>> oracle.budget = None
        Traceback (most recent call last):
        ...
        AttributeError: TargetOracle settings are fixed at construction: cannot set 'budget'
    """

    __slots__ = ("_gate",)
    _gate: _Gate

    def __init__(
        self,
        model: nn.Module,
        *,
        access: Access = "white-box",
        budget: int | None = None,
        top_k: int = 5,
        postprocess: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        try:
            object.__getattribute__(self, "_gate")
        except AttributeError:
            pass
        else:
            raise TypeError("this TargetOracle is already constructed; its settings are fixed")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for attr in ("num_classes", "input_shape"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"model {type(model).__name__} has no {attr!r} attribute: a target exposes "
                    "num_classes and input_shape (C, H, W); wrap a plain module with "
                    "mibench_lib.byo.as_target(module, num_classes=K, input_shape=(C, H, W))"
                )
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {ACCESS_LEVELS}, got {access!r}")
        if budget is not None:
            budget = _positive_int("budget", budget)
        top_k = _positive_int("top_k", top_k)
        if postprocess is not None and not callable(postprocess):
            raise TypeError(f"postprocess must be callable or None, got {postprocess!r}")
        settings = _Settings(
            access=ACCESS_LEVELS[ACCESS_LEVELS.index(access)],  # the canonical plain str
            budget=budget,
            top_k=top_k,
            postprocess=postprocess,
            num_classes=int(model.num_classes),
            input_shape=tuple(int(s) for s in model.input_shape),
        )
        object.__setattr__(self, "_gate", _make_gate(model.eval(), settings))

    # -- immutability ------------------------------------------------------------------------
    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(
            f"TargetOracle settings are fixed at construction: cannot set {name!r}"
        )

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(
            f"TargetOracle settings are fixed at construction: cannot delete {name!r}"
        )

    def _refuse_copy(self, *_: object) -> NoReturn:
        raise TypeError(
            "a TargetOracle cannot be copied or pickled (it would share or expose the target); "
            "build a new TargetOracle from the model instead"
        )

    __copy__ = __deepcopy__ = __reduce__ = __reduce_ex__ = __getstate__ = _refuse_copy

    # -- what every attacker may know -------------------------------------------------------
    @property
    def access(self) -> str:
        """The access level, one of :data:`ACCESS_LEVELS`."""
        return self._gate.settings.access

    @property
    def budget(self) -> int | None:
        """Maximum number of images answered in total (``None`` when unlimited)."""
        return self._gate.settings.budget

    @property
    def top_k(self) -> int:
        """Number of probabilities released at access ``"top-k"``."""
        return self._gate.settings.top_k

    @property
    def postprocess(self) -> Callable[[Tensor], Tensor] | None:
        """The output defense applied to black-box answers (``None`` when there is none)."""
        return self._gate.settings.postprocess

    @property
    def queries(self) -> int:
        """Number of images answered so far."""
        return self._gate.queries()

    @property
    def remaining(self) -> int | None:
        """Queries left in the budget (``None`` when unlimited)."""
        budget = self.budget
        return None if budget is None else budget - self.queries

    @property
    def num_classes(self) -> int:
        """Number of output classes of the target (public knowledge in every threat model)."""
        return self._gate.settings.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the target accepts."""
        return self._gate.settings.input_shape  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        """Device the target lives on; queries are moved there."""
        return self._gate.device()

    @property
    def is_white_box(self) -> bool:
        """True when the attacker holds the model itself."""
        return self.access == "white-box"

    @property
    def module(self) -> nn.Module:
        """The target model itself; only white-box attackers may have it.

        Raises:
            AccessDenied: for every access level but ``"white-box"``.
        """
        return self._gate.module()

    # -- queries -----------------------------------------------------------------------------
    def __call__(self, images: Tensor) -> Tensor:
        """Answer one batch of queries at this oracle's access level.

        Args:
            images: (N, C, H, W) floating-point tensor in [0, 1]; moved to the target's device.
                At black-box access only its values are used: it is copied into a fresh plain
                tensor first, so tensor subclasses and autograd history never reach the model.

        Returns:
            White-box: (N, K) logits attached to the graph. ``"logits"``: (N, K) detached logits.
            ``"probabilities"``: (N, K) detached probabilities. ``"top-k"``: (N, K) probabilities
            with all but the k largest per row set to 0 (not renormalised). ``"label"``: (N,) int64.
            Black-box answers are plain ``torch.Tensor`` s without autograd history.

        Raises:
            QueryBudgetExceeded: the batch would take the count past the budget (nothing is run).
            ValueError: ``images`` is not a 4-D batch of the target's input shape.
            TypeError: ``images`` is not a floating-point ``torch.Tensor``.
        """
        gate = self._gate
        if gate.settings.access == "white-box":
            return gate.query(_plain_view(images))
        return gate.query(_plain_copy(images, gate.device()))

    def __repr__(self) -> str:
        return f"TargetOracle(access={self.access!r}, queries={self.queries}, budget={self.budget})"
