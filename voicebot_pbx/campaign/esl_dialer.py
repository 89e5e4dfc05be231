"""Campaign calls placed by FreeSWITCH (``[campaign] pbx = "freeswitch"``).

One inbound event-socket connection per dial (mod_event_socket's listener, ``[freeswitch]
esl_host``/``esl_port``, password from ``esl_password_env``): ``auth``, then ``api originate
{vars}<dial string> '&socket(<bot> async full)'``. The API call returns when the callee
answers (``+OK <uuid>``: the answered leg is already on its way to this bot's socket
listener) or the dial fails (``-ERR USER_BUSY``, ``-ERR NO_ANSWER`` ...). originate splits
its arguments on spaces and cuts ``&app(...)`` at the first ")", so the application is
quoted and variable values carry neither spaces nor commas nor quotes.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import deque

from voicebot_pbx.campaign.contacts import Contact, campaign_variables
from voicebot_pbx.campaign.runner import DialerUnavailable, DialResult
from voicebot_pbx.config import Config
from voicebot_pbx.pbx import esl_codec as esl

_BUSY = {"USER_BUSY", "CALL_REJECTED"}
_NO_ANSWER = {"NO_ANSWER", "NO_USER_RESPONSE", "ORIGINATOR_CANCEL", "ALLOTTED_TIMEOUT"}


def _value(text: str) -> str:
    """A channel-variable value originate's {} block keeps whole."""
    return re.sub(r"[\s,'\"{}()\[\]^]+", "_", text)[:120]


def originate_command(config: Config, contact: Contact, call_id: str, campaign: str) -> str:
    cfg = config.campaign
    variables = {
        "origination_uuid": call_id,
        "originate_timeout": str(max(1, round(config.ami.outbound_timeout_s))),
        **campaign_variables(contact, campaign),
    }
    if cfg.caller_id:
        variables["origination_caller_id_number"] = re.sub(r"\D", "", cfg.caller_id)[-20:]
    block = ",".join(f"{k}={_value(v)}" for k, v in variables.items())
    dial = cfg.channel.replace("{number}", re.sub(r"[^0-9+*#]", "", contact.number))
    fs = config.freeswitch
    return f"originate {{{block}}}{dial} '&socket({fs.host}:{fs.port} async full)'"


def outcome_of(reply: str) -> DialResult:
    text = reply.strip()
    if text.startswith("+OK"):
        return DialResult("answered")
    cause = text.removeprefix("-ERR").strip().split()[0] if text.startswith("-ERR") else ""
    if cause in _BUSY:
        return DialResult("busy", cause)
    if cause in _NO_ANSWER:
        return DialResult("no_answer", cause)
    return DialResult("failed", text[:200] or "empty reply")


class _EslConnection:
    """One inbound event-socket connection: messages in arrival order (a read can carry
    several; none is dropped)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._parser = esl.Parser()
        self._pending: deque[esl.Message] = deque()

    async def next(self) -> esl.Message:
        while not self._pending:
            data = await self.reader.read(65536)
            if not data:
                self._parser.check_eof()
                raise esl.ProtocolError("eof", "FreeSWITCH closed the event socket")
            self._pending.extend(self._parser.feed(data))
        return self._pending.popleft()


class EslDialer:
    def __init__(self, config: Config) -> None:
        self.config = config

    async def start(self) -> None:
        """Check the event socket answers and the password works (one clear error if not)."""
        (await self._connect()).writer.close()

    async def close(self) -> None:
        return None

    async def _connect(self) -> _EslConnection:
        fs = self.config.freeswitch
        password = os.environ.get(fs.esl_password_env, "")
        if not password:
            raise DialerUnavailable(f"${fs.esl_password_env} is not set")
        try:
            async with asyncio.timeout(self.config.ami.action_timeout_s):
                link = _EslConnection(*await asyncio.open_connection(fs.esl_host, fs.esl_port))
                request = await link.next()
                if request.content_type != "auth/request":
                    raise DialerUnavailable(f"not an event socket: {request.content_type!r}")
                link.writer.write(esl.encode_command(f"auth {password}"))
                reply = await link.next()
        except (OSError, TimeoutError, esl.ProtocolError) as exc:
            raise DialerUnavailable(
                f"FreeSWITCH event socket: {type(exc).__name__}: {exc}"
            ) from None
        if not reply.get("Reply-Text").startswith("+OK"):
            link.writer.close()
            raise DialerUnavailable("FreeSWITCH event socket refused the password")
        return link

    async def dial(self, contact: Contact, call_id: str, campaign: str) -> DialResult:
        link = await self._connect()
        try:
            command = originate_command(self.config, contact, call_id, campaign)
            link.writer.write(esl.encode_api(command))
            async with asyncio.timeout(self.config.ami.outbound_timeout_s + 15.0):
                while True:
                    message = await link.next()
                    if message.content_type == "api/response":
                        return outcome_of(message.body.decode("utf-8", "replace"))
        except (OSError, esl.ProtocolError) as exc:
            return DialResult("failed", f"{type(exc).__name__}: {exc}")
        finally:
            link.writer.close()
