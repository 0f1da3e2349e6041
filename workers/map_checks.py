"""What the service says about each computed map: the method's own figures, and whether the map
is degenerate (zero, constant or non-finite everywhere a user would look)."""

from collections.abc import Sequence

import numpy as np

from schemas.explain import DegenerateKind, MapChecks
from workers.methods.base import AttributionMap, MapWarning

_REASONS: dict[DegenerateKind, str] = {
    "all_zero": "the map is zero everywhere: it points at nothing",
    "constant": "the map has one value everywhere: it points at nothing",
    "non_finite": "the map holds NaN or infinite values (shown as 0)",
}


def degenerate_kind(values: np.ndarray) -> DegenerateKind | None:
    """How a map is degenerate by inspection, or None when it varies and is finite."""
    if not np.isfinite(values).all():
        return "non_finite"
    if not values.any():
        return "all_zero"
    if values.max() == values.min():
        return "constant"
    return None


def map_warning(values: np.ndarray, noted: MapWarning | None) -> MapWarning | None:
    """The warning a map carries: what inspection finds, in the method's words when the method
    explained that very failure; else the method's own warning (a quadrature that did not
    converge)."""
    kind = degenerate_kind(values)
    if kind is None:
        return noted
    if noted is not None and noted.kind == kind:
        return noted
    return MapWarning(kind, _REASONS[kind])


UNORDERED: frozenset[DegenerateKind] = frozenset({"all_zero", "constant", "non_finite"})
"""The kinds of degenerate map that give no order of relevance among the pixels the map covers:
zero or constant maps tie every pixel, and a non-finite map's order is that of values replaced by
0. Deleting or inserting their pixels "most relevant first" would measure an arbitrary order, so
they get no `evaluation`. A map that did not converge still orders its pixels."""


def orders_pixels(checks: MapChecks | None) -> bool:
    """Whether a map with these checks ranks its pixels, so that its evaluation means something."""
    return checks is None or checks.degenerate not in UNORDERED


def finite_values(values: np.ndarray) -> np.ndarray:
    """The map with NaN and ±inf replaced by 0, so that it renders and serialises."""
    if np.isfinite(values).all():
        return values
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def row_checks(attribution: AttributionMap, values: np.ndarray) -> list[MapChecks | None]:
    """One `MapChecks` per row of `values` (the maps as computed, (N, H, W)): the method's
    per-sample figures and any warning; None for a row with nothing to report."""
    columns = {
        name: tensor.detach().double().cpu().tolist() for name, tensor in attribution.checks.items()
    }
    noted: Sequence[MapWarning | None] = attribution.warnings or [None] * len(values)
    checks: list[MapChecks | None] = []
    for i, row in enumerate(values):
        figures: dict[str, object] = {
            name: _finite_or_none(column[i]) for name, column in columns.items()
        }
        warning = map_warning(row, noted[i])
        if warning is not None:
            figures.update(degenerate=warning.kind, warning=warning.reason)
        checks.append(MapChecks.model_validate(figures) if figures else None)
    return checks


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None
