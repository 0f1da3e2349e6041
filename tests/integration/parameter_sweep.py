"""Every numeric parameter of every method, read from the JSON Schema the API publishes, and the
hostile values a careless or hostile client sends them.

Values are JSON text, because `Infinity`, `NaN` and `1e999` (which JSON readers turn into
infinity) cannot be written by a standard JSON encoder.
"""

import json
import math
from dataclasses import dataclass

from schemas.methods import PARAMS_BY_METHOD, MethodParams
from schemas.visualizations import VisualizationParams

# The visualization endpoint's parameters, swept like a method's.
ACTIVATION_MAX = "activation_max"
PARAMS: dict[str, type[MethodParams]] = {**PARAMS_BY_METHOD, ACTIVATION_MAX: VisualizationParams}

HOSTILE = ("Infinity", "-Infinity", "NaN", "1e999", "-1e999", "1e308", str(2**64), "-1", "-1e308")

# Other parameters a request needs for one parameter's value to be judged alone: a visualization
# needs an objective (a class, or a layer for a channel), and occlusion's stride may not exceed
# its window.
_CONTEXT: dict[tuple[str, str], dict[str, object]] = {
    (ACTIVATION_MAX, "channel"): {"layer": "features.14"},
    ("occlusion", "stride"): {"window": 512},
}
_DEFAULT_CONTEXT: dict[str, dict[str, object]] = {ACTIVATION_MAX: {"target": 0}}


@dataclass(frozen=True)
class NumericParameter:
    """One number a method takes, as its published JSON Schema describes it."""

    method: str
    name: str
    integer: bool
    minimum: float | None
    maximum: float | None
    exclusive_minimum: bool
    exclusive_maximum: bool
    in_list: bool

    def __str__(self) -> str:
        return f"{self.method}.{self.name}"

    def allows(self, value: float) -> bool:
        """Whether the schema admits `value` (a float is no integer, even 2.0)."""
        if not math.isfinite(value) or (self.integer and not isinstance(value, int)):
            return False
        if self.minimum is not None and (
            value < self.minimum or (self.exclusive_minimum and value == self.minimum)
        ):
            return False
        return self.maximum is None or not (
            value > self.maximum or (self.exclusive_maximum and value == self.maximum)
        )

    def edges(self) -> list[tuple[str, bool]]:
        """Values at and just beyond each bound, as JSON text, with whether each is admitted."""
        values: list[float] = []
        for bound, outward in ((self.minimum, -math.inf), (self.maximum, math.inf)):
            assert bound is not None, f"{self} has no documented bound"
            if self.integer:
                values += [int(bound), int(bound) + (1 if outward > 0 else -1)]
            else:
                values += [bound, math.nextafter(bound, outward), math.nextafter(bound, -outward)]
        return [(json.dumps(value), self.allows(value)) for value in values]

    def params_json(self, value: str) -> str:
        """The method's parameters, as JSON text, with this one set to `value` (JSON text)."""
        context = _CONTEXT.get((self.method, self.name), _DEFAULT_CONTEXT.get(self.method, {}))
        placeholder = "__value__"
        fields = {**context, self.name: [placeholder] if self.in_list else placeholder}
        return json.dumps(fields).replace(json.dumps(placeholder), value)


def numeric_parameters() -> list[NumericParameter]:
    """Every integer and number property of every method's parameters, lists' items included."""
    found = []
    for method, model in PARAMS.items():
        for name, prop in model.model_json_schema()["properties"].items():
            in_list = prop.get("type") == "array"
            if in_list:
                prop = prop["items"]
            for option in prop.get("anyOf", [prop]):
                if option.get("type") in ("integer", "number"):
                    found.append(_parameter(method, name, option, in_list))
    return found


def _parameter(
    method: str, name: str, schema: dict[str, object], in_list: bool
) -> NumericParameter:
    def bound(inclusive: str, exclusive: str) -> tuple[float | None, bool]:
        if exclusive in schema:
            return float(schema[exclusive]), True  # type: ignore[arg-type]
        if inclusive in schema:
            value = schema[inclusive]
            return (value if isinstance(value, int) else float(value)), False  # type: ignore[arg-type]
        return None, False

    minimum, exclusive_minimum = bound("minimum", "exclusiveMinimum")
    maximum, exclusive_maximum = bound("maximum", "exclusiveMaximum")
    return NumericParameter(
        method=method,
        name=name,
        integer=schema["type"] == "integer",
        minimum=minimum,
        maximum=maximum,
        exclusive_minimum=exclusive_minimum,
        exclusive_maximum=exclusive_maximum,
        in_list=in_list,
    )


def parsed(value: str) -> float:
    """A JSON number's value as Python's reader takes it: `1e999` is infinity, an integer stays
    one."""
    number = json.loads(value)
    assert isinstance(number, int | float)
    return number
