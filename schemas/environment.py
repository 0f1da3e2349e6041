"""The environment variables of a settings class, listed from its fields for `--help`.

Both `glimpse serve --help` and `glimpse-worker --help` print this list, so it always matches
what the settings read: the variable (`env_prefix` + the field name in capitals, or the field's
aliases), its default and its description. `glimpse env-table` and `glimpse-worker --env-table`
print the same as the Markdown tables of docs/deployment.md.
"""

import json
from pathlib import Path

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo, PydanticUndefined

# Factories whose value is the same for every process, so that it can be shown as the default.
_CONSTANT_FACTORIES: tuple[object, ...] = (list, dict, set, tuple)


def variable_names(name: str, field: FieldInfo, env_prefix: str) -> list[str]:
    """The environment variables that set a field, the preferred one first."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    return [f"{env_prefix}{name}".upper()]


def default_text(field: FieldInfo) -> str:
    """A field's default as one would write it in the environment."""
    if field.default_factory is not None:
        if field.default_factory in _CONSTANT_FACTORIES:
            value: object = field.get_default(call_default_factory=True)
        else:
            return "(computed per process)"
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Path):
        return str(value)
    return json.dumps(value)


def environment_help(settings: type[BaseModel]) -> str:
    """`environment variables:` and one aligned line per field: variable, default, meaning."""
    env_prefix = str(settings.model_config.get("env_prefix", ""))
    rows = [
        (
            ", ".join(variable_names(name, field, env_prefix)),
            default_text(field),
            field.description or "",
        )
        for name, field in settings.model_fields.items()
    ]
    name_width = max(len(row[0]) for row in rows)
    default_width = max(len(row[1]) for row in rows)
    lines = [
        f"  {name:<{name_width}}  {default:<{default_width}}  {meaning}".rstrip()
        for name, default, meaning in rows
    ]
    return "environment variables (name, default, meaning):\n" + "\n".join(lines)


def markdown_table(settings: type[BaseModel], shared: type[BaseModel] | None = None) -> str:
    """A Markdown table of the variables `settings` reads: variable, default, meaning; the
    fields it takes from `shared` (read alike by the gateway and every worker) say "(both)"."""
    env_prefix = str(settings.model_config.get("env_prefix", ""))
    shared_fields = set(shared.model_fields) if shared is not None else set()
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in settings.model_fields.items():
        variables = ", ".join(f"`{v}`" for v in variable_names(name, field, env_prefix))
        default = default_text(field)
        shown = default if default.startswith("(") else f"`{default}`"
        # Escaped so that Markdown shows `|` and `<id>` rather than a cell break and a tag.
        meaning = (field.description or "").replace("|", r"\|").replace("<", "&lt;")
        if name in shared_fields:
            meaning = f"(both) {meaning}"
        lines.append(f"| {variables} | {shown} | {meaning} |")
    return "\n".join(lines)
