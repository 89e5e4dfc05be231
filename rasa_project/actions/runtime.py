"""What the actions run with: the back ends, the budget, the clock.

Read once from the JSON file named by ``$VOICEBOT_ACTIONS_CONFIG`` (written by the bot from
its ``[actions]`` section: voicebot_pbx/answers/action_server.py). Without it, the demo
company's SQLite database in the repository's default state dir (``.cache/state``). A SQL
back end marked ``"demo"`` is created and seeded on first use (``demo_data.seed_demo``;
idempotent).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .backend import Account, Backend, BackendError
from .backend_config import open_backends
from .demo_data import seed_demo

log = logging.getLogger(__name__)

CONFIG_ENV = "VOICEBOT_ACTIONS_CONFIG"
RECENT_S = 30.0
# The bot's default state dir (.cache/state), where it would put the demo database too.
_DEMO_DB = Path(__file__).resolve().parents[2] / ".cache" / "state" / "backend-demo.sqlite"
_DEFAULT: dict[str, Any] = {
    "budget_s": 1.5,
    "identity_attempts": 3,
    "account_alternatives": 6,
    "default": {"kind": "sql", "dsn": str(_DEMO_DB), "demo": True},
    "systems": {},
}


class Runtime:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.budget_s = float(config.get("budget_s", _DEFAULT["budget_s"]))
        self.identity_attempts = int(config.get("identity_attempts", _DEFAULT["identity_attempts"]))
        self.account_alternatives = int(
            config.get("account_alternatives", _DEFAULT["account_alternatives"])
        )
        for spec in [config.get("default", {}), *dict(config.get("systems", {})).values()]:
            if spec.get("kind") == "sql" and spec.get("demo"):
                dsn = str(spec["dsn"])
                if not dsn.startswith("postgres"):
                    Path(dsn.replace("sqlite:///", "/", 1)).parent.mkdir(
                        parents=True, exist_ok=True
                    )
                rows = seed_demo(dsn)
                log.info("demo back end ready: %s (%d accounts)", spec["dsn"], rows)
        self._backends: dict[str, Backend] = open_backends(config)
        # Accounts just read for a call (its spoken number's readings, the identity
        # question), so the check and the balance that follow need no second lookup
        # (seconds, in this process only). Keyed by (call, account number): another call's
        # lookup never stands in for this one's, so a back end down now is noticed.
        self._recent: dict[tuple[str, str], tuple[float, Account]] = {}
        self._failed: dict[tuple[str, str], tuple[float, BackendError]] = {}

    def backend(self, system: str) -> Backend:
        return self._backends[system]

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - RECENT_S
        self._recent = {k: v for k, v in self._recent.items() if v[0] >= cutoff}
        self._failed = {k: v for k, v in self._failed.items() if v[0] >= cutoff}

    def remember(self, call: str, account: Account) -> None:
        self._forget_old()
        self._failed.pop((call, account.number), None)
        self._recent[(call, account.number)] = (time.monotonic(), account)

    def remember_failure(self, call: str, number: str, error: BackendError) -> None:
        """The back end failed to read ``number`` for ``call`` (the identity question's
        lookup): the check of the answer that follows says so without asking it again."""
        self._forget_old()
        self._failed[(call, number)] = (time.monotonic(), error)
        self._recent.pop((call, number), None)

    def recent_failure(self, call: str, number: str) -> BackendError | None:
        """The failure just remembered for ``number`` in ``call`` (once; None after
        RECENT_S)."""
        seen = self._failed.pop((call, number), None)
        if seen is None or seen[0] < time.monotonic() - RECENT_S:
            return None
        return seen[1]

    def recent(self, call: str, number: str) -> Account | None:
        """The account ``call`` read within RECENT_S, or None."""
        seen = self._recent.get((call, number))
        if seen is None or seen[0] < time.monotonic() - RECENT_S:
            return None
        return seen[1]

    def now(self) -> dt.datetime:
        return dt.datetime.now().replace(second=0, microsecond=0)

    def today(self) -> dt.date:
        return self.now().date()


_lock = threading.Lock()
_runtime: Runtime | None = None


def load_config() -> dict[str, Any]:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return dict(_DEFAULT)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def runtime() -> Runtime:
    """The process's runtime, built on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(load_config())
        return _runtime
