"""Which back end answers for which system, from a JSON-able dict written by the bot:

    {"budget_s": 1.5,
     "systems": {"billing": {"kind": "sql", "dsn": "/path/demo.sqlite"},
                 "outages": {"kind": "http", "url": "http://127.0.0.1:8080",
                             "timeout_s": 1.5, "retries": 2},
                 "bookings": {"kind": "sql", "dsn": "postgresql://..."}},
     "default": {"kind": "sql", "dsn": "..."}}

The systems are "billing", "outages" and "bookings"; one missing from "systems" uses
"default". ``timeout_s`` defaults to the top-level ``budget_s`` (else 1.5 s).

kind "sql": ``dsn`` (required; see ``backend_sql.py``), ``timeout_s``.
kind "http": ``url`` (required, http:// or https://), ``timeout_s``, ``retries`` (2),
``backoff_s`` (0.1), ``max_response_bytes`` (65536), ``headers`` ({name: value}),
``breaker`` ({"failures_to_open": 3, "reset_after_s": 30}, or false for none; one breaker
per system by default).

Other keys are ignored here (``runtime.py`` reads ``"demo": true`` on a SQL system to seed
it; other top-level keys such as ``identity_attempts`` are its own).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from .backend import SYSTEMS, Backend
from .backend_sql import SqlBackend, parse_dsn
from .circuit import CircuitBreaker

__all__ = ["KINDS", "SYSTEMS", "config_problems", "open_backends"]

KINDS = ("sql", "http")
DEFAULT_BUDGET_S = 1.5


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _spec_for(config: Mapping[str, Any], system: str) -> tuple[str, Any]:
    """(how to name it in a message, the spec) for one system."""
    systems = config.get("systems")
    if isinstance(systems, Mapping) and system in systems:
        return f"{system} (systems.{system})", systems[system]
    return f"{system} (default)", config.get("default")


def _spec_problems(where: str, spec: Any) -> list[str]:
    if spec is None:
        return [f"{where}: no back end configured (add systems entry or 'default')"]
    if not isinstance(spec, Mapping):
        return [f"{where}: must be an object, not {type(spec).__name__}"]
    kind = spec.get("kind")
    if kind not in KINDS:
        return [f"{where}: 'kind' is {kind!r}; expected one of {', '.join(KINDS)}"]
    problems: list[str] = []
    if "timeout_s" in spec and not (_is_number(spec["timeout_s"]) and spec["timeout_s"] > 0):
        problems.append(f"{where}: 'timeout_s' must be a positive number")
    if kind == "sql":
        dsn = spec.get("dsn")
        if not isinstance(dsn, str) or not dsn.strip():
            problems.append(f"{where}: 'dsn' missing for kind 'sql'")
        else:
            try:
                target = parse_dsn(dsn)
            except ValueError as exc:
                problems.append(f"{where}: 'dsn': {exc}")
            else:
                if target.dialect == "postgres" and importlib.util.find_spec("psycopg") is None:
                    problems.append(f"{where}: 'dsn' is PostgreSQL but psycopg is not installed")
        return problems
    url = spec.get("url")
    if not isinstance(url, str) or not url.strip():
        problems.append(f"{where}: 'url' missing for kind 'http'")
    elif not url.startswith(("http://", "https://")):
        problems.append(f"{where}: 'url' must start with http:// or https://, not {url!r}")
    if importlib.util.find_spec("httpx") is None:
        problems.append(f"{where}: kind 'http' needs httpx, which is not installed")
    retries = spec.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        problems.append(f"{where}: 'retries' must be a whole number >= 0")
    if "backoff_s" in spec and not (_is_number(spec["backoff_s"]) and spec["backoff_s"] >= 0):
        problems.append(f"{where}: 'backoff_s' must be a number >= 0")
    size = spec.get("max_response_bytes", 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        problems.append(f"{where}: 'max_response_bytes' must be a whole number >= 1")
    headers = spec.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        problems.append(f"{where}: 'headers' must be an object of strings")
    breaker = spec.get("breaker", {})
    if breaker is not False:
        if not isinstance(breaker, Mapping):
            problems.append(f"{where}: 'breaker' must be an object or false")
        else:
            opens = breaker.get("failures_to_open", 1)
            if not isinstance(opens, int) or isinstance(opens, bool) or opens < 1:
                problems.append(f"{where}: 'breaker.failures_to_open' must be a whole number >= 1")
            reset = breaker.get("reset_after_s", 0)
            if not (_is_number(reset) and reset >= 0):
                problems.append(f"{where}: 'breaker.reset_after_s' must be a number >= 0")
    return problems


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Everything wrong with ``config`` (see the module docstring), as messages naming the
    system and the key; [] when :func:`open_backends` would accept it."""
    if not isinstance(config, Mapping):
        return [f"the back-end config must be an object, not {type(config).__name__}"]
    problems: list[str] = []
    budget = config.get("budget_s", DEFAULT_BUDGET_S)
    if not (_is_number(budget) and budget > 0):
        problems.append("'budget_s' must be a positive number")
    systems = config.get("systems", {})
    if not isinstance(systems, Mapping):
        problems.append("'systems' must be an object")
    else:
        for name in systems:
            if name not in SYSTEMS:
                problems.append(
                    f"systems.{name}: unknown system; expected one of {', '.join(SYSTEMS)}"
                )
    for system in SYSTEMS:
        where, spec = _spec_for(config, system)
        problems.extend(_spec_problems(where, spec))
    return problems


def open_backends(config: Mapping[str, Any]) -> dict[str, Backend]:
    """A back end for each of "billing", "outages" and "bookings" (no I/O yet). ValueError
    naming the system and key when the config is wrong (all the problems, one per line).
    The caller closes them: ``await backend.aclose()`` for each."""
    problems = config_problems(config)
    if problems:
        raise ValueError("back-end config: " + "\n".join(problems))
    budget = float(config.get("budget_s", DEFAULT_BUDGET_S))
    backends: dict[str, Backend] = {}
    for system in SYSTEMS:
        _, spec = _spec_for(config, system)
        timeout_s = float(spec.get("timeout_s", budget))
        if spec["kind"] == "sql":
            backends[system] = SqlBackend(spec["dsn"], system, timeout_s=timeout_s)
            continue
        from .backend_http import HttpBackend  # needs httpx: only for kind "http"

        breaker_spec = spec.get("breaker", {})
        breaker = (
            None
            if breaker_spec is False
            else CircuitBreaker(
                failures_to_open=int(breaker_spec.get("failures_to_open", 3)),
                reset_after_s=float(breaker_spec.get("reset_after_s", 30.0)),
            )
        )
        backends[system] = HttpBackend(
            spec["url"],
            system,
            timeout_s=timeout_s,
            retries=int(spec.get("retries", 2)),
            backoff_s=float(spec.get("backoff_s", 0.1)),
            max_response_bytes=int(spec.get("max_response_bytes", 65536)),
            breaker=breaker,
            headers=dict(spec.get("headers", {})),
        )
    return backends
