"""YAML mappings validated into frozen dataclasses, by the dataclasses' type hints: unknown keys, wrong types and
failed ``__post_init__`` checks raise ``RecipeError`` naming the origin (the file) and the dotted key."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields
from typing import Any, Literal

from supportprune.errors import SupportpruneError


class RecipeError(SupportpruneError):
    """A recipe file or override that does not validate."""


def is_plain_data(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(is_plain_data(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def plain_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def build_dataclass(cls: type, raw: Any, origin: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"{origin}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise RecipeError(
                f"{origin}: {prefix}{key}: unknown key; known keys here: {', '.join(sorted(known))}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, origin, f"{prefix}{name}")
    try:
        return cls(**values)
    except ValueError as error:
        message = str(error)
        key = message.split(":", 1)[0]
        raise RecipeError(f"{origin}: {prefix}{message}" if key in known else f"{origin}: {prefix.rstrip('.')}: {message}") from None


def _coerce(hint: Any, value: Any, origin: str, key: str) -> Any:
    origin_type = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail(expected: str) -> RecipeError:
        return RecipeError(f"{origin}: {key}: expected {expected}, got {value!r}")

    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, origin, f"{key}.")
    if origin_type is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
            raise fail("a mapping of argument names to values")
        bad = [k for k, v in value.items() if not is_plain_data(v)]
        if bad:
            raise RecipeError(f"{origin}: {key}.{bad[0]}: expected a YAML scalar or list, got {value[bad[0]]!r}")
        return dict(value)
    if origin_type in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, origin, key)
    if origin_type is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin_type is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return tuple(_coerce(args[0], item, origin, f"{key}[{i}]") for i, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"unsupported recipe field type {hint} for {key}")
