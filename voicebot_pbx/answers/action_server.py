"""The Rasa action server (``rasa_project/actions``, rasa-sdk in the Rasa venv): what it is
told, how it runs, and the ``[actions]`` checks.

* ``backends_document(config, state_dir)`` turns ``[actions]`` into the JSON the actions read
  (``actions/backend_config.py``): the budget, the identity attempts and one back end per
  system (billing, outages, bookings).
* ``ActionServer`` writes that document (mode 0600: a DSN may hold a password), runs
  ``python -m rasa_sdk --actions actions`` bound to loopback (``SANIC_HOST``), polls
  ``GET /health`` and restarts it with back-off (``supervised.SupervisedChild``).
* ``python -m voicebot_pbx.answers.action_server exec|wait`` is the same for systemd
  (``systemd/voicebot-actions@.service``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from voicebot_pbx.answers.rasa_server import RASA_ENV, default_rasa_venv
from voicebot_pbx.answers.supervised import (
    ChildError,
    SupervisedChild,
    SupervisedServer,
    wait_for_http,
)
from voicebot_pbx.config import ActionsConfig

__all__ = [
    "ActionServer",
    "ActionServerError",
    "backends_document",
    "demo_dsn",
]

log = structlog.get_logger(__name__)

_REPO = Path(__file__).resolve().parents[2]
SYSTEMS = ("billing", "outages", "bookings")
_DEMO_DB = "backend-demo.sqlite"


class ActionServerError(ChildError):
    """The action server could not be started."""


def demo_dsn(state_dir: str | Path) -> str:
    """The demo company's SQLite database (seeded by the action server when missing)."""
    return str((Path(state_dir) / _DEMO_DB).absolute())


def _system_spec(value: str, config: ActionsConfig, state_dir: str | Path) -> dict[str, Any]:
    """``"sql:DSN"`` / ``"http:URL"`` / ``""`` (the default back end) as the actions' dict."""
    kind, _, target = value.partition(":") if value else (config.backend, "", "")
    if kind == "sql":
        dsn = target or os.environ.get(config.dsn_env, "") or config.dsn
        return {"kind": "sql", "dsn": dsn or demo_dsn(state_dir), "demo": not dsn}
    if kind == "http":
        return {
            "kind": "http",
            "url": target or config.http_url,
            "timeout_s": config.http_timeout_s,
            "retries": config.http_retries,
        }
    return {"kind": kind}  # reported by actions_problems


def backends_document(config: ActionsConfig, state_dir: str | Path) -> dict[str, Any]:
    """What the action server reads from ``$VOICEBOT_ACTIONS_CONFIG``."""
    return {
        "budget_s": config.budget_s,
        "identity_attempts": config.identity_attempts,
        "account_alternatives": config.account_alternatives,
        "default": _system_spec("", config, state_dir),
        "systems": {
            name: _system_spec(getattr(config, name), config, state_dir)
            for name in SYSTEMS
            if getattr(config, name)
        },
    }


class ActionServer(SupervisedServer):
    """Runs and supervises one rasa-sdk action server for ``[actions]``."""

    def __init__(
        self,
        config: ActionsConfig,
        *,
        state_dir: str | Path,
        venv_dir: Path | None = None,
        project_dir: Path | None = None,
        work_dir: Path | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        restart_backoff_s: Sequence[float] = (1.0, 2.0, 5.0, 10.0, 30.0),
        stable_after_s: float = 60.0,
        env_extra: Mapping[str, str] | None = None,
    ) -> None:
        url = urlsplit(config.url)
        self.config = config
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 5055
        self.state_dir = Path(state_dir).absolute()
        self.venv_dir = (venv_dir or default_rasa_venv()).absolute()
        self.project_dir = (project_dir or _REPO / "rasa_project").absolute()
        self.work_dir = (work_dir or self.state_dir).absolute()
        self._env_extra = dict(env_extra or {})
        self._child = SupervisedChild(
            event_prefix="action_server",
            host=self.host,
            port=self.port,
            argv=self.argv,
            env=self.env,
            cwd=self.work_dir,
            log_path=self.log_path,
            probe=self._probe,
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=stop_timeout_s,
            restart_backoff_s=restart_backoff_s,
            stable_after_s=stable_after_s,
            error=ActionServerError,
            pid_path=self.work_dir / f"actions-{self.port}.pid",
            orphan_marks=("rasa_sdk", f"--port {self.port}"),
        )

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def webhook_url(self) -> str:
        """What Rasa's ``action_endpoint`` points at."""
        return f"{self.base_url}/webhook"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "logs" / f"actions-{self.port}.log"

    @property
    def config_path(self) -> Path:
        return self.work_dir / f"actions-{self.port}.json"

    def write_config(self) -> Path:
        path = self.config_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(backends_document(self.config, self.state_dir), indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    def argv(self) -> list[str]:
        python = self.venv_dir / "bin" / "python"
        return [str(python), "-m", "rasa_sdk", "--actions", "actions", "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RASA_ENV)
        env["SANIC_HOST"] = self.host  # rasa-sdk binds 0.0.0.0 unless told
        env["ACTION_SERVER_SANIC_WORKERS"] = "1"
        env["PYTHONPATH"] = str(self.project_dir)
        env["VOICEBOT_ACTIONS_CONFIG"] = str(self.config_path)
        env.update(self._env_extra)
        return env

    async def _probe(self, client: httpx.AsyncClient) -> bool:
        resp = await client.get(f"{self.base_url}/health")
        return resp.status_code == 200 and resp.json().get("status") == "ok"

    async def start(self) -> None:
        if not (self.venv_dir / "bin" / "python").exists():
            raise ActionServerError(
                f"Rasa venv missing at {self.venv_dir}: run scripts/install-rasa first"
            )
        self.write_config()
        await self._child.start()


# -- command line (systemd) ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    from voicebot_pbx.config import load_config
    from voicebot_pbx.config.parse import ConfigError

    p = argparse.ArgumentParser(prog="python -m voicebot_pbx.answers.action_server")
    p.add_argument("command", choices=("exec", "wait"))
    p.add_argument("--config", default=None, help="the bot's config (default: built-in)")
    p.add_argument("--timeout", type=float, default=60.0, help="wait: give up after (s)")
    p.add_argument("--venv", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("action_server.config_error", error=str(exc))
        return 2
    server = ActionServer(config.actions, state_dir=config.state_dir, venv_dir=args.venv)
    if args.command == "wait":
        return wait_for_http(
            f"{server.base_url}/health", args.timeout, event_prefix="action_server"
        )
    server.write_config()
    argv_run = server.argv()
    sys.stdout.flush()
    os.execve(argv_run[0], argv_run, server.env())  # systemd supervises the real process


if __name__ == "__main__":
    raise SystemExit(main())
