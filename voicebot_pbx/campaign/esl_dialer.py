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

from voicebot_pbx.campaign.contacts import Contact
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
        "VOICEBOT_CAMPAIGN": campaign,
        "VOICEBOT_CONTACT": str(contact.seq),
    }
    if contact.profile:
        variables["VOICEBOT_PROFILE"] = contact.profile
    if cfg.caller_id:
        variables["origination_caller_id_number"] = re.sub(r"\D", "", cfg.caller_id)[-20:]
    variables.update({f"VOICEBOT_VAR_{k}": v for k, v in contact.variables})
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


class EslDialer:
    def __init__(self, config: Config) -> None:
        self.config = config

    async def start(self) -> None:
        """Check the event socket answers and the password works (one clear error if not)."""
        _reader, writer, _parser = await self._connect()
        writer.close()

    async def close(self) -> None:
        return None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, esl.Parser]:
        fs = self.config.freeswitch
        password = os.environ.get(fs.esl_password_env, "")
        if not password:
            raise DialerUnavailable(f"${fs.esl_password_env} is not set")
        try:
            async with asyncio.timeout(self.config.ami.action_timeout_s):
                reader, writer = await asyncio.open_connection(fs.esl_host, fs.esl_port)
                parser = esl.Parser()
                request = await self._next(reader, parser)
                if request.content_type != "auth/request":
                    raise DialerUnavailable(f"not an event socket: {request.content_type!r}")
                writer.write(esl.encode_command(f"auth {password}"))
                reply = await self._next(reader, parser)
        except (OSError, TimeoutError, esl.ProtocolError) as exc:
            raise DialerUnavailable(
                f"FreeSWITCH event socket: {type(exc).__name__}: {exc}"
            ) from None
        if not reply.get("Reply-Text").startswith("+OK"):
            writer.close()
            raise DialerUnavailable("FreeSWITCH event socket refused the password")
        return reader, writer, parser

    @staticmethod
    async def _next(reader: asyncio.StreamReader, parser: esl.Parser) -> esl.Message:
        while True:
            data = await reader.read(65536)
            if not data:
                parser.check_eof()
                raise esl.ProtocolError("eof", "FreeSWITCH closed the event socket")
            messages = parser.feed(data)
            if messages:
                return messages[0]

    async def dial(self, contact: Contact, call_id: str, campaign: str) -> DialResult:
        reader, writer, parser = await self._connect()
        try:
            writer.write(esl.encode_api(originate_command(self.config, contact, call_id, campaign)))
            async with asyncio.timeout(self.config.ami.outbound_timeout_s + 15.0):
                while True:
                    message = await self._next(reader, parser)
                    if message.content_type == "api/response":
                        return outcome_of(message.body.decode("utf-8", "replace"))
        except (OSError, esl.ProtocolError) as exc:
            return DialResult("failed", f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()
