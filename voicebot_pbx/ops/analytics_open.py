"""From ``AnalyticsConfig`` to a store: where the SQLite file and the recordings live, this
node's name, how to connect to the configured back end (``store_factory``, for the writer
thread) and a migrated store for reading (``open_store``, for reports)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from voicebot_pbx.config import AnalyticsConfig
from voicebot_pbx.ops.analytics_postgres import PostgresStore
from voicebot_pbx.ops.analytics_schema import SCHEMA_VERSION
from voicebot_pbx.ops.analytics_sqlite import SqliteStore
from voicebot_pbx.ops.analytics_store import AnalyticsError, Store


def sqlite_path(config: AnalyticsConfig, state_dir: str | Path) -> Path:
    return Path(config.sqlite_path) if config.sqlite_path else Path(state_dir) / "calls.db"


def recordings_dir(config: AnalyticsConfig, state_dir: str | Path) -> Path:
    return Path(config.recordings_dir) if config.recordings_dir else Path(state_dir) / "recordings"


def node_name(config: AnalyticsConfig) -> str:
    return config.node or socket.gethostname()


def store_factory(config: AnalyticsConfig, state_dir: str | Path) -> Callable[[], Store]:
    """How to connect to the configured store (called in the writer thread)."""
    if config.backend == "postgres":
        dsn = os.environ.get(config.dsn_env, "")
        if not dsn:
            raise AnalyticsError(
                f"analytics.backend is postgres but ${config.dsn_env} (the DSN) is not set"
            )
        return lambda: PostgresStore.connect(dsn)
    path = sqlite_path(config, state_dir)
    return lambda: SqliteStore.open(path)


def open_store(config: AnalyticsConfig, state_dir: str | Path) -> Store:
    """A migrated store for reading (reports); an existing SQLite file is required."""
    if config.backend == "postgres":
        store: Store = store_factory(config, state_dir)()
    else:
        store = SqliteStore.open(sqlite_path(config, state_dir), create=False)
    try:
        if store.schema_version() < SCHEMA_VERSION:  # reading needs no write access otherwise
            store.migrate()
    except Exception:
        store.close()
        raise
    return store
