"""What the AMI client takes from panoramisk, adapted: the secret (from a file or the
environment, never logged, and redacted from panoramisk's own wire log), and the
``Manager``/``AMIProtocol`` subclasses that stop panoramisk from managing the connection
itself (no automatic reconnect, no re-queued actions; the client does that)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager

from voicebot_pbx.config import AmiConfig as AmiConfig
from voicebot_pbx.pbx.ami_codec import (
    AmiConfigError,
)

log = structlog.get_logger("voicebot_pbx.ami")


# ---------------------------------------------------------------------------------------------
# Secrets


def load_secret(config: AmiConfig, environ: Mapping[str, str] | None = None) -> str:
    """The AMI secret from ``secret_file`` (if set) or ``$secret_env``. Never logged."""
    env = os.environ if environ is None else environ
    if config.secret_file:
        path = Path(os.path.expandvars(config.secret_file))
        try:
            secret = path.read_text(encoding="utf-8").strip("\r\n")
        except OSError as exc:
            raise AmiConfigError(f"AMI secret file {path}: {exc.strerror or exc}") from None
        source = f"file {path}"
    else:
        secret = env.get(config.secret_env, "")
        source = f"${config.secret_env}"
    if not secret:
        raise AmiConfigError(f"AMI secret is empty ({source}); set it or disable [ami]")
    if "\r" in secret or "\n" in secret:
        raise AmiConfigError(f"AMI secret ({source}) contains a line break")
    return secret


class _RedactSecrets(logging.Filter):
    """panoramisk logs whole actions in some error paths; never let a Login through."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken record: drop it rather than risk leaking
            return False
        return "secret" not in text.lower()


_WIRE_LOG = logging.getLogger("voicebot_pbx.ami.panoramisk")
_WIRE_LOG.addFilter(_RedactSecrets())


# ---------------------------------------------------------------------------------------------
# panoramisk, with its connection management replaced


class WireOwner(Protocol):
    """The client a connection reports to (``AmiClient``)."""

    def on_wire_event(self, manager: WireManager, message: Any) -> None: ...

    def on_connection_lost(self, manager: WireManager, exc: object) -> None: ...


class WireManager(Manager):  # type: ignore[misc]
    """One per TCP connection, so a late ``connection_lost`` of an old one is recognisable."""

    def __init__(self, owner: WireOwner, host: str, port: int) -> None:
        super().__init__(host=host, port=port, log=_WIRE_LOG, forgetable_actions=("ping", "login"))
        # panoramisk registers send_awaiting_actions on FullyBooted, which replays actions
        # that were pending when the previous connection dropped. Those have already failed
        # here (AmiNotConnected); replaying a Redirect later could move the wrong call.
        self.callbacks.clear()
        self.patterns.clear()
        self._owner = owner
        self.register_event("*", self._on_event)

    def _on_event(self, _manager: Any, message: Any) -> None:
        # Synchronous on purpose: panoramisk would ensure_future() a coroutine (unowned).
        self._owner.on_wire_event(self, message)

    def connection_lost(self, exc: object) -> None:
        # Replaces panoramisk's version, which schedules its own fixed-interval reconnect.
        self._connected = False
        self.awaiting_actions.clear()
        self._owner.on_connection_lost(self, exc)


class WireProtocol(AMIProtocol):  # type: ignore[misc]
    def __init__(self, manager: WireManager) -> None:
        super().__init__()
        self._manager = manager

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # What Manager.connection_made does, minus its login and pinger (ours are awaited).
        # Done here, not after create_connection returns, so the banner can't arrive first.
        self.factory = self._manager
        self.log = _WIRE_LOG
        self.config = self._manager.config
        self.encoding = "utf8"
        self._manager.protocol = self
        self._manager.responses = self.responses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
