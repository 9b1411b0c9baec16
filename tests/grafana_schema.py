"""A check of a Grafana dashboard against Grafana's own models (grafana-foundation-sdk, generated
from Grafana's dashboard and panel schemas): every value of its schema type, no key left over."""

from __future__ import annotations

import enum
import types
import typing
from typing import Any


def schema_problems(value: Any, hint: Any, path: str) -> list[str]:
    """Where `value` (as read by a model of grafana-foundation-sdk) does not fit the type `hint`
    of that model: a wrong type, or a value outside an enumeration."""
    origin = typing.get_origin(hint)
    if hint in (Any, object):
        return model_problems(value, path) if hasattr(value, "to_json") else []
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if value is None or option is not type(None)]
        results = [schema_problems(value, option, path) for option in options]
        return [] if any(not result for result in results) else min(results, key=len)
    if hint is type(None):
        return [] if value is None else [f"{path}: {value!r} should be null"]
    if origin is typing.Literal:
        return [] if value in typing.get_args(hint) else [f"{path}: {value!r} not in {typing.get_args(hint)}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} should be a list"]
        (item,) = typing.get_args(hint)
        return [problem for i, each in enumerate(value) for problem in schema_problems(each, item, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} should be an object"]
        item = typing.get_args(hint)[1]
        return [problem for key, each in value.items() for problem in schema_problems(each, item, f"{path}.{key}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = {member.value for member in hint}
        raw = value.value if isinstance(value, enum.Enum) else value
        return [] if raw in allowed else [f"{path}: {value!r} not one of {sorted(map(str, allowed))}"]
    scalars: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
    if hint in scalars:
        fits = isinstance(value, scalars[hint]) and (hint is bool or not isinstance(value, bool))
        return [] if fits else [f"{path}: {value!r} should be a {hint.__name__}"]
    if isinstance(hint, type) and isinstance(value, hint) and hasattr(value, "to_json"):
        return model_problems(value, path)
    return [f"{path}: {value!r} is not a {getattr(hint, '__name__', hint)}"]


def model_problems(model: Any, path: str) -> list[str]:
    hints = typing.get_type_hints(type(model).__init__)
    hints.pop("return", None)
    return [
        problem
        for name, hint in hints.items()
        for problem in schema_problems(getattr(model, name), hint, f"{path}.{name}")
    ]


def dropped_keys(source: Any, read_back: Any, path: str = "$") -> list[str]:
    """Keys of `source` that Grafana's models did not read (so: not in the schema)."""
    if isinstance(source, dict):
        if not isinstance(read_back, dict):
            return [path]
        return [
            dropped
            for key, value in source.items()
            for dropped in (
                [f"{path}.{key}"] if key not in read_back else dropped_keys(value, read_back[key], f"{path}.{key}")
            )
        ]
    if isinstance(source, list):
        if not isinstance(read_back, list) or len(source) != len(read_back):
            return [path]
        return [
            dropped
            for i, (a, b) in enumerate(zip(source, read_back, strict=True))
            for dropped in dropped_keys(a, b, f"{path}[{i}]")
        ]
    return []
