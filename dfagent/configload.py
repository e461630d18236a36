"""Build frozen config dataclasses from parsed YAML, and turn them back into plain data.

The loader is strict: unknown keys are errors, every value is checked against the field's type,
and every problem is reported with its dotted path (`proxy.rules[1].regex`) at once.

A dataclass may define `check(self) -> list[Problem]` for range and cross-field rules. A
problem names one field, or a tuple of fields for a conflict between them (reported under the
first). `check` runs even when some fields could not be read (they hold their defaults then):
problems of those fields are dropped, and a conflict is reported only while none of its fields
is wrong on its own, so each error is reported once, under the field that is wrong.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from dfagent.configtypes import ByteSize, Duration, ListenAddress, finite
from dfagent.errors import ConfigError

__all__ = ["Problem", "build", "to_plain"]

T = TypeVar("T")
Problem = tuple[str | tuple[str, ...], str]  # (field or conflicting fields, reason)
_PARSED_TYPES: tuple[type, ...] = (ByteSize, Duration, ListenAddress)


class _Problems(Exception):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems


def build(cls: type[T], data: object, path: str = "") -> T:
    """Build `cls` from `data` (a mapping from YAML); raise ConfigError listing every problem."""
    try:
        return _build_dataclass(cls, data, path)
    except _Problems as problems:
        raise ConfigError(problems.problems) from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build_dataclass(cls: type[T], data: object, path: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _Problems([(path or "<top>", f"expected a mapping, got {type(data).__name__}")])
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    problems: list[tuple[str, str]] = []
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append((_join(path, str(key)), f"unknown key (known: {known})"))
    values: dict[str, Any] = {}
    unread: set[str] = set()  # fields whose value could not be read
    for name in fields:
        if name in data:
            try:
                values[name] = _convert(hints[name], data[name], _join(path, name))
            except _Problems as nested:
                problems.extend(nested.problems)
                unread.add(name)
    required = [
        name
        for name, spec in fields.items()
        if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
    ]
    problems.extend(
        (_join(path, name), "missing (this key is required)")
        for name in required
        if name not in data
    )
    if not values.keys() >= set(required):
        raise _Problems(problems)  # no instance to check without its required fields
    instance = cls(**values)  # an unread field holds its default
    check = getattr(instance, "check", None)
    if check is not None:
        problems.extend((_join(path, f), reason) for f, reason in _checked(check(), unread))
    if problems:
        raise _Problems(problems)
    return instance


def _checked(found: list[Problem], unread: set[str]) -> list[tuple[str, str]]:
    """A check's problems, each under one field: none for fields that could not be read, and
    conflicts only between fields that are right on their own."""
    wrong = set(unread)
    single = []
    for field, reason in found:
        if isinstance(field, str) and _base(field) not in unread:
            single.append((field, reason))
            wrong.add(_base(field))
    conflicts = [
        (fields[0], reason)
        for fields, reason in found
        if isinstance(fields, tuple) and not wrong.intersection(map(_base, fields))
    ]
    return single + conflicts


def _base(field: str) -> str:
    """The dataclass field a problem path starts with: `intercept[1]` -> `intercept`."""
    return field.split("[", 1)[0].split(".", 1)[0]


def _convert(hint: Any, value: object, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        (hint,) = options
        return _convert(hint, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _Problems([(path, f"expected a list, got {type(value).__name__}")])
        (item,) = get_args(hint)[:1]
        problems: list[tuple[str, str]] = []
        items = []
        for i, element in enumerate(value):
            try:
                items.append(_convert(item, element, f"{path}[{i}]"))
            except _Problems as nested:
                problems.extend(nested.problems)
        if problems:
            raise _Problems(problems)
        return tuple(items)
    if dataclasses.is_dataclass(hint) and hint not in _PARSED_TYPES:
        return _build_dataclass(hint, value, path)
    try:
        return _scalar(hint, value)
    except ValueError as exc:
        raise _Problems([(path, str(exc))]) from None


def _scalar(hint: Any, value: object) -> Any:
    if hint in _PARSED_TYPES:
        return hint.parse(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        return value
    if hint is float:
        return _finite(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        if "\0" in value:  # no path, name or pattern holds one; os and socket calls refuse it
            raise ValueError("cannot contain a NUL character")
        return value
    if isinstance(hint, type) and issubclass(hint, str):  # str enums / literals
        return hint(value)
    if get_origin(hint) is typing.Literal:
        if value not in get_args(hint):
            allowed = ", ".join(map(str, get_args(hint)))
            raise ValueError(f"expected one of {allowed}, got {value!r}")
        return value
    raise TypeError(f"config field type {hint!r} is not supported")  # a bug in a config class


def _finite(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return finite(value, "number", value)


def to_plain(value: object) -> object:
    """Config object -> YAML-ready data, sizes and durations in human units."""
    if isinstance(value, ByteSize | Duration | ListenAddress):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value
