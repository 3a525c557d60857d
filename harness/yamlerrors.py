"""Problems in the YAML files people write (rig, fleet and field files), each named by its
field path and line and said in words a lab engineer reads without knowing pydantic."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

#: pydantic error types said plainly.
FRIENDLY = {
    "model_type": "expected a mapping of fields",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "missing": "required field is missing",
    "int_type": "expected a whole number",
}

_LOC_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def field_path(loc: tuple[str | int, ...]) -> str:
    """``("nodes", 2, "power")`` as ``nodes[2].power``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def yaml_name(name: str, field: FieldInfo) -> str:
    """The name a YAML file gives the field: its alias when it has one (``from`` for a
    field that Python cannot call ``from``)."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return field.alias or name


def yaml_names(model: type[BaseModel]) -> list[str]:
    """The names of ``model``'s fields as a YAML file writes them, in their order."""
    return [yaml_name(name, field) for name, field in model.model_fields.items()]


def _field_named(model: type[BaseModel], part: str) -> FieldInfo | None:
    """The field a ``loc`` part names: errors give the YAML name (the alias)."""
    for name, field in model.model_fields.items():
        if yaml_name(name, field) == part:
            return field
    return model.model_fields.get(part)


def model_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel]:
    """The model whose field ``loc`` names, under ``root`` (for listing valid fields)."""
    model = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = _field_named(model, str(part))
        nested = _nested_model(field.annotation) if field is not None else None
        if nested is None:
            break
        model = nested
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def pydantic_reason(error: ErrorDetails, root: type[BaseModel]) -> str:
    """What is wrong with the field of one pydantic error, plainly."""
    loc = tuple(error["loc"])
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        return f"unknown field; valid fields: {', '.join(yaml_names(model_at(root, loc[:-1])))}"
    if kind == "string_type" and type(given) in (int, float):
        return f"expected text, got the number {given!r}: quote it in YAML ('{given}')"
    if kind in FRIENDLY:
        reason = FRIENDLY[kind]
        if kind == "int_type" and given is not None:
            reason += f" (got {given!r})"
        return reason
    reason = error["msg"].removeprefix("Value error, ")
    if kind != "value_error" and isinstance(given, str | int | float | bool | None):
        reason += f" (got {given!r})"
    return reason


def yaml_problem(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """The line (1-based, when known) and the reason of a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    reason = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    if context and "alias" in context:
        reason += "; a value starting with '*' must be quoted, e.g. nodes: \"*\""
    if mark is None:
        return None, reason
    return mark.line + 1, f"{reason}, column {mark.column + 1}"


def line_of(
    text: str, field: str | None, loader: type[yaml.SafeLoader] = yaml.SafeLoader
) -> int | None:
    """1-based line of ``field`` in the YAML ``text`` (its nearest existing parent's if it is
    missing); None for a top-level field that is missing."""
    if not field:
        return None
    try:
        node = yaml.compose(text, Loader=loader)
    except yaml.YAMLError:
        return None
    line = None
    for name, index in _LOC_PART.findall(field):
        if isinstance(node, yaml.MappingNode) and name:
            found = [(k, v) for k, v in node.value if str(k.value) == name]
            if not found:
                break
            key, node = found[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
            node = node.value[int(index)]
            line = node.start_mark.line + 1
        else:
            break
    return line


#: One problem: the field path (None: the whole file), its line (None: unknown), the reason.
Problem = tuple[str | None, int | None, str]


class YamlFileError(ValueError):
    """A file (or its data) that cannot be used.

    ``source`` is the file (or a stand-in such as ``<rig>``); ``problems`` lists ``(field,
    line, reason)`` for each problem found; ``field`` / ``line`` / ``reason`` are the first
    one's. One problem reads on one line, several as a list.
    """

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        self.field, self.line, self.reason = problems[0]
        if len(problems) == 1:
            message = f"{source}{_where(self.field, self.line)}: {self.reason}"
        else:
            lines = [f"  {_where(f, n)[2:] or 'file'}: {r}" for f, n, r in problems]
            message = f"{source}: {len(problems)} problems:\n" + "\n".join(lines)
        super().__init__(message)


def _where(field: str | None, line: int | None) -> str:
    return (f", line {line}" if line else "") + (f", {field}" if field else "")


class FieldError(ValueError):
    """A validator's error about a part of the field it checks (``sub_loc`` below it)."""

    def __init__(self, message: str, *sub_loc: str | int) -> None:
        super().__init__(message)
        self.sub_loc = sub_loc


def read_yaml(
    path: str | os.PathLike[str],
    fail: Callable[[list[Problem]], Exception],
    loader: type[yaml.SafeLoader] = yaml.SafeLoader,
) -> tuple[str, Any]:
    """A YAML file's text and data; a file that cannot be read or parsed raises
    ``fail(problems)`` (the file's own error type)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail([(None, None, f"cannot read the file: {exc}")]) from None
    try:
        return text, yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise fail([(None, *yaml_problem(exc))]) from None


def with_lines(
    text: str, problems: list[Problem], loader: type[yaml.SafeLoader] = yaml.SafeLoader
) -> list[Problem]:
    """``problems`` with the line of each field in ``text``."""
    return [(f, line_of(text, f, loader), r) for f, _, r in problems]
