"""Generic TOML-data <-> frozen-dataclass conversion for the configuration.

Owns :class:`ConfigError`, :func:`build` (a TOML table into a dataclass, every value checked
against the field's type: an unknown key or a wrong type is a ``ConfigError`` naming the key
and the file) and :func:`as_dict` (a config back to plain data for ``check-config``, with the
fields :func:`is_secret_field` names masked). Knows no section: the section modules beside it
hold the schema, ``load.py`` loads the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin


class ConfigError(ValueError):
    pass


T = TypeVar("T")

# Field names whose values are masked by ``check-config``: matched against whole words of the
# name (``auth_token``, ``api_key`` but not ``max_tokens``). Names ending in ``_env`` hold the
# *name* of an environment variable, not a secret, and are shown.
SECRET_MARKERS = ("secret", "password", "passwd", "api_key", "token")


def is_secret_field(name: str) -> bool:
    words = name.lower().split("_")
    if words[-1] == "env":
        return False
    joined = f"_{'_'.join(words)}_"
    return any(f"_{marker}_" in joined for marker in SECRET_MARKERS)


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} = {value!r} is not one of {list(allowed)}")
        return value
    if origin in (types.UnionType, typing.Union):
        errors = []
        for option in get_args(tp):
            try:
                return _convert(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{source}: {key} = {value!r} has the wrong type ({'; '.join(errors)})")
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {type(value).__name__}")
        return tuple(_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{key}] must be a table, got {type(value).__name__}")
        return build(tp, value, key, source)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{source}: {key} must be empty")
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{source}: {key} must be {_type_name(tp)}, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {tp!r}")


def build(cls: type[T], data: dict[str, Any], prefix: str, source: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"{source}: unknown key {full!r}")
        kwargs[key] = _convert(value, hints[key], full, source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: [{prefix or 'top level'}]: {exc}") from exc


def as_dict(config: object, *, mask_secrets: bool = True) -> dict[str, Any]:
    """The effective config as plain data (for ``check-config``), secrets masked."""
    result: dict[str, Any] = {}
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            result[f.name] = as_dict(value, mask_secrets=mask_secrets)
        elif isinstance(value, tuple):
            result[f.name] = [
                as_dict(v, mask_secrets=mask_secrets) if dataclasses.is_dataclass(v) else v
                for v in value
            ]
        elif mask_secrets and value and is_secret_field(f.name):
            result[f.name] = "********"
        else:
            result[f.name] = value
    return result
