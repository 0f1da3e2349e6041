"""What a loaded model offers the methods, and for each `Need` it lacks, why.

A method declares what it needs of a model (`MethodParams.needs`); `describe_model` answers, once
per model, which of those needs the model meets. Each need that a model can lack has one check,
registered with `@need_check` beside the code that relies on it (`cam.py` finds the head), so a
new kind of model or method adds a check and never edits a list of cases. A method whose needs
are not all met is refused with the reason (`AttributionMethod.unsupported_reason`): it never
computes something else under its name.
"""

import weakref
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from schemas.methods import Need

NeedCheck = Callable[[nn.Module], str | None]
"""Why a model lacks a need, or None when it has it."""

_CHECKS: dict[Need, NeedCheck] = {}

Check = TypeVar("Check", bound=NeedCheck)


def need_check(need: Need) -> Callable[[Check], Check]:
    """Decorator: the function that tells whether a model meets `need` (None) or why not."""

    def register(check: Check) -> Check:
        if need in _CHECKS:
            raise ValueError(f"need {need!r} has two checks")
        _CHECKS[need] = check
        return check

    return register


class ModelFacts:
    """Which needs a model meets, each need checked when first asked about, then remembered.

    A check that raises counts as the need unmet, with the error as the reason.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = weakref.ref(model)
        self._missing: dict[Need, str | None] = {}

    def reason(self, need: Need) -> str | None:
        """Why the model lacks `need`, or None when it meets it (or no check exists for it)."""
        if need not in self._missing:
            model, check = self._model(), _CHECKS.get(need)
            self._missing[need] = None if model is None or check is None else _run(check, model)
        return self._missing[need]

    def lacks(self, needs: frozenset[Need]) -> list[tuple[Need, str]]:
        """The needs among `needs` the model does not meet, with their reasons, sorted."""
        reasons = ((need, self.reason(need)) for need in sorted(needs))
        return [(need, reason) for need, reason in reasons if reason is not None]


def _run(check: NeedCheck, model: nn.Module) -> str | None:
    try:
        return check(model)
    except Exception as exc:  # a check runs model code (tracing); any failure is a "no"
        return f"{type(exc).__name__}: {exc}"


_FACTS: "weakref.WeakKeyDictionary[nn.Module, ModelFacts]" = weakref.WeakKeyDictionary()


def describe_model(model: nn.Module) -> ModelFacts:
    """The facts of `model`, one object per model (its checks run when first asked about)."""
    facts = _FACTS.get(model)
    if facts is None:
        facts = _FACTS[model] = ModelFacts(model)
    return facts
