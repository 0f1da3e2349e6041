"""What a loaded model offers the methods, and for each `Need` it lacks, why.

A method declares what it needs of a model (`MethodParams.needs`); `describe_model` answers, once
per model, which of those needs the model meets. Each need that a model can lack has one check,
registered with `@need_check` beside the code that relies on it (`cam.py` finds the head), so a
new kind of model or method adds a check and never edits a list of cases. A method whose needs
are not all met is refused with the reason (`AttributionMethod.unsupported_reason`): it never
computes something else under its name.
"""

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
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


@dataclass(frozen=True)
class ModelFacts:
    """Which needs a model lacks, each with the reason; a need absent from `missing` is met."""

    missing: Mapping[Need, str]

    def lacks(self, needs: frozenset[Need]) -> list[tuple[Need, str]]:
        """The needs among `needs` the model does not meet, with their reasons, sorted."""
        return [(need, self.missing[need]) for need in sorted(needs) if need in self.missing]


_FACTS: "weakref.WeakKeyDictionary[nn.Module, ModelFacts]" = weakref.WeakKeyDictionary()


def describe_model(model: nn.Module) -> ModelFacts:
    """The facts of `model`, computed once per model by every registered check.

    A check that raises counts as the need unmet, with the error as the reason.
    """
    facts = _FACTS.get(model)
    if facts is None:
        missing: dict[Need, str] = {}
        for need, check in _CHECKS.items():
            try:
                reason = check(model)
            except Exception as exc:  # a check runs model code (tracing); any failure is a "no"
                reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                missing[need] = reason
        facts = ModelFacts(MappingProxyType(missing))
        _FACTS[model] = facts
    return facts
