"""Seeded fuzzing of every parser a PBX (or anyone on the PBX's network) can feed (issue #24
item 7, kept fast: pure functions, a few thousand inputs, well under a second each).

The property is the one the transports rely on: whatever bytes arrive, a parser returns
messages or raises its own declared error (which closes only that connection with one
``bad_input`` line); anything else would escape as a crash of the connection task. Valid
streams split at random points decode to the same messages as in one piece.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.test_esl_codec import DTMF_EVENT, JOB_EVENT, LINGER
from voicebot_pbx.pbx import audiosocket_codec as audiosocket
from voicebot_pbx.pbx import esl_codec as esl
from voicebot_pbx.pbx import websocket_codec as websocket
from voicebot_pbx.pbx.ami_codec import AmiMessage, audiosocket_uuid, canonical_uuid, parse_event

SEED = 20261203
CASES = 4000


def mutations(rng: random.Random, valid: bytes, cases: int) -> Iterator[bytes]:
    """Damaged copies of ``valid``: flipped bits, random bytes in place, inserted and
    deleted runs, truncation, duplication, and pure noise."""
    for _ in range(cases):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            choice = rng.randrange(7)
            where = rng.randrange(len(data) + 1)
            if choice == 0 and data:
                data[min(where, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif choice == 1 and data:
                data[min(where, len(data) - 1)] = rng.randrange(256)
            elif choice == 2:
                data[where:where] = rng.randbytes(rng.randint(1, 12))
            elif choice == 3:
                del data[where : where + rng.randint(1, 12)]
            elif choice == 4:
                del data[where:]
            elif choice == 5:
                data += data[: rng.randint(0, len(data))]
            else:
                data = bytearray(rng.randbytes(rng.randint(0, 64)))
        yield bytes(data)


def chunks(rng: random.Random, data: bytes) -> Iterator[bytes]:
    """``data`` in random pieces (as TCP may deliver it)."""
    at = 0
    while at < len(data):
        size = rng.randint(1, 40)
        yield data[at : at + size]
        at += size


def only_declared_errors(
    feed: Callable[[bytes], object], data: bytes, error: type[Exception]
) -> None:
    try:
        feed(data)
    except error:
        pass
    except Exception as exc:  # pragma: no cover - this is the failure being looked for
        pytest.fail(f"{type(exc).__name__}: {exc} on input {data[:80]!r}")


# --- AudioSocket ------------------------------------------------------------------------


def audiosocket_stream(rng: random.Random) -> tuple[bytes, list[audiosocket.Message]]:
    messages: list[audiosocket.Message] = [audiosocket.Uuid(uuid.UUID(int=rng.getrandbits(128)))]
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(3)
        if kind == 0:
            rate = rng.choice((8000, 16000))
            messages.append(audiosocket.Audio(rate, rng.randbytes(2 * rng.randint(1, 40))))
        elif kind == 1:
            messages.append(audiosocket.Dtmf(rng.choice("0123456789*#")))
        else:
            messages.append(audiosocket.Hangup())
    return b"".join(audiosocket.encode_message(m) for m in messages), messages


def test_audiosocket_split_anywhere_decodes_the_same() -> None:
    rng = random.Random(SEED)
    for _ in range(300):
        stream, messages = audiosocket_stream(rng)
        decoder = audiosocket.Decoder()
        got = [m for piece in chunks(rng, stream) for m in decoder.feed(piece)]
        decoder.check_eof()
        assert got == messages


def test_audiosocket_damaged_input_raises_only_protocol_errors() -> None:
    rng = random.Random(SEED + 1)
    seen: set[str] = set()
    for _ in range(CASES // 100):
        stream, _messages = audiosocket_stream(rng)
        for data in mutations(rng, stream, 100):
            decoder = audiosocket.Decoder()

            def feed(data: bytes, decoder: audiosocket.Decoder = decoder) -> None:
                for piece in chunks(rng, data):
                    decoder.feed(piece)
                decoder.check_eof()

            try:
                feed(data)
            except audiosocket.ProtocolError as exc:
                seen.add(exc.reason)
            except Exception as exc:  # pragma: no cover
                pytest.fail(f"{type(exc).__name__}: {exc} on input {data[:80]!r}")
    # The damage reached several different checks, not only the first one.
    assert {"unknown_kind", "truncated"} <= seen and len(seen) >= 4, seen


# --- chan_websocket control messages --------------------------------------------------------

PLAIN_START = (
    "MEDIA_START connection_id:c0ffee channel:WebSocket/voicebot-00000001 "
    "channel_id:1764720000.42 format:slin16 optimal_frame_size:640 ptime:20"
)
JSON_START = json.dumps(
    {
        "event": "MEDIA_START",
        "connection_id": "c0ffee",
        "channel": "WebSocket/voicebot-00000001",
        "channel_id": "1764720000.42",
        "format": "ulaw",
        "optimal_frame_size": 160,
        "ptime": 20,
    }
)
OTHERS = ["MEDIA_XOFF", "MEDIA_XON", "QUEUE_DRAINED", '{"event":"DTMF_END","digit":"5"}']


def test_websocket_control_damage_raises_only_control_errors() -> None:
    rng = random.Random(SEED + 2)
    parsed = 0
    for valid in [PLAIN_START, JSON_START, *OTHERS]:
        for data in mutations(rng, valid.encode(), CASES // 6):
            text = data.decode("utf-8", errors="replace")
            try:
                websocket.parse_control(text)
                parsed += 1
            except websocket.ControlError:
                pass
            except Exception as exc:  # pragma: no cover
                pytest.fail(f"{type(exc).__name__}: {exc} on {text[:80]!r}")
    assert parsed > 0  # some damage still parses (an unknown event, a changed value)


# --- FreeSWITCH event socket ---------------------------------------------------------------


def test_esl_split_anywhere_parses_the_same() -> None:
    rng = random.Random(SEED + 3)
    stream = DTMF_EVENT + JOB_EVENT + LINGER
    whole = esl.Parser().feed(stream)
    for _ in range(200):
        parser = esl.Parser()
        got = [m for piece in chunks(rng, stream) for m in parser.feed(piece)]
        assert got == whole


def test_esl_damaged_input_raises_only_protocol_errors() -> None:
    rng = random.Random(SEED + 4)
    for valid in (DTMF_EVENT, JOB_EVENT, LINGER, DTMF_EVENT + JOB_EVENT):
        for data in mutations(rng, valid, CASES // 4):
            parser = esl.Parser(max_header_bytes=4096, max_body_bytes=4096)

            def feed(data: bytes, parser: esl.Parser = parser) -> None:
                for piece in chunks(rng, data):
                    for message in parser.feed(piece):
                        if message.content_type == "text/event-plain":
                            esl.parse_event(message)
                parser.check_eof()

            only_declared_errors(feed, data, esl.ProtocolError)


# --- AMI events -----------------------------------------------------------------------------


def test_ami_events_with_damaged_headers_never_raise() -> None:
    """AMI is read by panoramisk; what reaches the bot is a header list. Any values, any
    missing headers: a typed event or ``OtherEvent``, never an exception."""
    rng = random.Random(SEED + 5)
    names = ["Newexten", "Hangup", "DTMFEnd", "OriginateResponse", "CoreShowChannel"]
    names += ["DialBegin", "Other"]
    fields = ["Channel", "Uniqueid", "Linkedid", "Context", "Exten", "Priority", "Application"]
    fields += ["AppData", "Digit", "Direction", "Response", "Reason", "DestChannel", "Cause"]
    for _ in range(CASES):
        headers = [("Event", rng.choice(names))]
        for _ in range(rng.randint(0, 8)):
            value = rng.choice(["", "x", "-1", "99999999999999999999", "AudioSocket(,)"])
            value = value if rng.random() < 0.5 else rng.randbytes(8).decode("latin-1")
            headers.append((rng.choice(fields), value))
        parse_event(AmiMessage(tuple(headers)))
        app_data = rng.randbytes(rng.randint(0, 60)).decode("latin-1")
        audiosocket_uuid(rng.choice(["AudioSocket", "Dial", ""]), app_data)
        canonical_uuid(app_data)
