"""chan_websocket codec: events in both control formats, commands, bad input, G.711 media.

The event strings below are written by hand the way Asterisk 22.10.1's
``channels/chan_websocket.c`` builds them (``_create_event_*``: ``ast_asprintf`` for plain
text, ``ast_json_dump_string_format(..., AST_JSON_COMPACT)`` for JSON), never by this codec.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot_pbx.pbx import websocket_codec as wire
from voicebot_pbx.pbx.wire import WireError

UNIQUEID = "1733195302.42"
CHANNEL = "WebSocket/media_connection1/0x7f3a2c01b2d0"
FOUR_SAMPLES = bytes.fromhex("0100ffffff7f0080")  # [1, -1, 32767, -32768] s16le

MEDIA_START_PLAIN = (
    f"MEDIA_START connection_id:media_connection1 channel:{CHANNEL} channel_id:{UNIQUEID} "
    "format:slin16 optimal_frame_size:640 ptime:20"
)
MEDIA_START_JSON = (
    '{"event":"MEDIA_START","connection_id":"media_connection1",'
    f'"channel":"{CHANNEL}","channel_id":"{UNIQUEID}","format":"slin16",'
    '"optimal_frame_size":640,"ptime":20,"channel_variables":'
    '{"MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE":"640",'
    '"MEDIA_WEBSOCKET_CONNECTION_ID":"media_connection1","__PROFILE":"sales desk"}}'
)


def media_start_plain(codec: str, frame_size: int | str = 640) -> str:
    return (
        f"MEDIA_START connection_id:c1 channel:{CHANNEL} channel_id:{UNIQUEID} "
        f"format:{codec} optimal_frame_size:{frame_size} ptime:20"
    )


def media_start_json(**overrides: object) -> str:
    document: dict[str, object] = {
        "event": "MEDIA_START",
        "connection_id": "c1",
        "channel": CHANNEL,
        "channel_id": UNIQUEID,
        "format": "slin16",
        "optimal_frame_size": 640,
        "ptime": 20,
        "channel_variables": {},
    }
    document.update(overrides)
    return json.dumps({k: v for k, v in document.items() if v is not None}, separators=(",", ":"))


def asterisk_reads(text: str, fmt: wire.ControlFormat) -> tuple[str | None, dict[str, str]]:
    """What chan_websocket's process_text_message/handle_command take from a command."""
    assert len(text.encode()) <= 128  # MAX_TEXT_MESSAGE_LEN
    text = text.strip()  # ast_strip
    if fmt == "json":
        document = json.loads(text)
        args = {k: document[k] for k in ("correlation_id", "direction") if k in document}
        return document.get("command"), args
    command, space, data = text.partition(" ")
    return command, ({"correlation_id": data} if space else {})


# --- MEDIA_START -------------------------------------------------------------------------


def test_media_start_plain() -> None:
    event = wire.parse_control(MEDIA_START_PLAIN)
    assert event == wire.MediaStart(
        connection_id="media_connection1",
        channel=CHANNEL,
        channel_id=UNIQUEID,
        format="slin16",
        optimal_frame_size=640,
        ptime_ms=20,
        rate_hz=16000,
    )
    assert isinstance(event, wire.MediaStart) and event.supported
    assert wire.message_format(MEDIA_START_PLAIN) == "plain"


def test_media_start_json_carries_channel_variables() -> None:
    event = wire.parse_control(MEDIA_START_JSON)
    assert isinstance(event, wire.MediaStart)
    assert (event.connection_id, event.channel, event.channel_id) == (
        "media_connection1",
        CHANNEL,
        UNIQUEID,
    )
    assert (event.format, event.optimal_frame_size, event.ptime_ms, event.rate_hz) == (
        "slin16",
        640,
        20,
        16000,
    )
    assert event.channel_variables == {
        "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "640",
        "MEDIA_WEBSOCKET_CONNECTION_ID": "media_connection1",
        "__PROFILE": "sales desk",
    }
    assert event.extra == {}
    assert wire.message_format(MEDIA_START_JSON) == "json"
    assert wire.message_format("  " + MEDIA_START_JSON) == "json"


def test_media_start_from_an_older_asterisk_without_channel_id_and_ptime() -> None:
    event = wire.parse_control(
        f"MEDIA_START connection_id:c1 channel:{CHANNEL} format:ulaw optimal_frame_size:160"
    )
    assert isinstance(event, wire.MediaStart)
    assert event.channel_id is None and event.ptime_ms is None
    assert (event.rate_hz, event.optimal_frame_size) == (8000, 160)


@pytest.mark.parametrize(
    ("codec", "rate_hz"),
    [
        ("slin", 8000),
        ("slin12", 12000),
        ("slin16", 16000),
        ("slin24", 24000),
        ("slin32", 32000),
        ("slin44", 44100),
        ("slin48", 48000),
        ("slin96", 96000),
        ("slin192", 192000),
        ("ulaw", 8000),
        ("alaw", 8000),
    ],
)
def test_media_start_rate_from_the_format_name(codec: str, rate_hz: int) -> None:
    for text in (media_start_plain(codec), media_start_json(format=codec)):
        event = wire.parse_control(text)
        assert isinstance(event, wire.MediaStart) and event.rate_hz == rate_hz
    assert wire.codec_rate_hz(codec) == rate_hz


@pytest.mark.parametrize("codec", ["opus", "g722", "g729", "gsm", "SLIN16", "sln16"])
def test_media_start_with_a_codec_the_bot_cannot_take_is_flagged(codec: str) -> None:
    for text in (media_start_plain(codec, 0), media_start_json(format=codec, optimal_frame_size=0)):
        event = wire.parse_control(text)
        assert isinstance(event, wire.MediaStart)
        assert event.format == codec and event.rate_hz is None and not event.supported


def test_media_start_unknown_fields_go_to_extra() -> None:
    event = wire.parse_control(MEDIA_START_PLAIN + " remote:10.0.0.9 direction:both")
    assert isinstance(event, wire.MediaStart)
    assert event.extra == {"remote": "10.0.0.9", "direction": "both"}
    event = wire.parse_control(media_start_json(flags={"a": 1}, bulk=True, note=None))
    assert isinstance(event, wire.MediaStart) and event.extra == {
        "flags": '{"a":1}',
        "bulk": "true",
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"MEDIA_START connection_id:c1 channel:{CHANNEL} optimal_frame_size:640", "no_format"),
        (media_start_plain(""), "no_format"),
        (media_start_json(format=None), "no_format"),
        (media_start_json(format=16), "no_format"),
        (media_start_plain("slin16", "abc"), "bad_frame_size"),
        (media_start_plain("slin16", "-640"), "bad_frame_size"),
        (media_start_plain("slin16", "6.4e2"), "bad_frame_size"),
        (media_start_json(optimal_frame_size="six"), "bad_frame_size"),
        (media_start_json(optimal_frame_size=True), "bad_frame_size"),
        (media_start_json(optimal_frame_size=640.5), "bad_frame_size"),
        (media_start_json(optimal_frame_size=None), "bad_frame_size"),
        (f"MEDIA_START connection_id:c1 channel:{CHANNEL} format:slin16", "bad_frame_size"),
        (media_start_json(ptime="twenty"), "bad_number"),
        (media_start_json(ptime=0), "bad_ptime"),
        (media_start_json(connection_id=None), "missing_field"),
        (media_start_json(channel=""), "missing_field"),
        (media_start_json(channel_id=42), "bad_field"),
        (media_start_json(channel_variables=["A=1"]), "bad_channel_variables"),
        (MEDIA_START_PLAIN + " stray", "bad_field"),
        (MEDIA_START_PLAIN + " format:ulaw", "duplicate_field"),
    ],
)
def test_malformed_media_start(text: str, reason: str) -> None:
    with pytest.raises(wire.ControlError) as caught:
        wire.parse_control(text)
    assert caught.value.reason == reason


def test_optimal_frame_size_as_a_json_string_is_accepted() -> None:
    event = wire.parse_control(media_start_json(optimal_frame_size="320", format="slin"))
    assert isinstance(event, wire.MediaStart) and event.optimal_frame_size == 320


# --- flow control, marks, buffering --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("MEDIA_XOFF", wire.MediaXoff),
        ("MEDIA_XON", wire.MediaXon),
        ("QUEUE_DRAINED", wire.QueueDrained),
    ],
)
def test_events_without_data(name: str, cls: type) -> None:
    # _create_event_nodata: the bare name, or {"event":..,"channel_id":..}
    assert wire.parse_control(name) == cls()
    assert wire.parse_control(f'{{"event":"{name}","channel_id":"{UNIQUEID}"}}') == cls(UNIQUEID)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("MEDIA_MARK_PROCESSED", wire.MediaMarkProcessed),
        ("MEDIA_BUFFERING_COMPLETED", wire.MediaBufferingCompleted),
    ],
)
def test_events_with_a_correlation_id(name: str, cls: type) -> None:
    # plain: "%s%s%s", name, S_COR(id, " ", ""), S_OR(id, "")
    assert wire.parse_control(f"{name} prompt-7") == cls("prompt-7")
    assert wire.parse_control(f"{name} two  words") == cls("two  words")
    assert wire.parse_control(name) == cls(None)
    # JSON: {"event", "channel_id", "correlation_id": S_OR(id, "")}
    assert wire.parse_control(
        f'{{"event":"{name}","channel_id":"{UNIQUEID}","correlation_id":"prompt-7"}}'
    ) == cls("prompt-7", UNIQUEID)
    assert wire.parse_control(
        f'{{"event":"{name}","channel_id":"{UNIQUEID}","correlation_id":""}}'
    ) == cls(None, UNIQUEID)


# --- DTMF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_dtmf_end_both_formats(digit: str) -> None:
    plain = f"DTMF_END digit:{digit} channel_id:{UNIQUEID}"
    as_json = f'{{"event":"DTMF_END","channel_id":"{UNIQUEID}","digit":"{digit}"}}'
    assert wire.parse_control(plain) == wire.DtmfEnd(digit, UNIQUEID)
    assert wire.parse_control(as_json) == wire.DtmfEnd(digit, UNIQUEID)


def test_dtmf_lowercase_letters_are_normalised() -> None:
    assert wire.parse_control(f"DTMF_END digit:b channel_id:{UNIQUEID}") == wire.DtmfEnd(
        "B", UNIQUEID
    )


@pytest.mark.parametrize(
    "text",
    [
        f"DTMF_END channel_id:{UNIQUEID}",
        f"DTMF_END digit: channel_id:{UNIQUEID}",
        f"DTMF_END digit:12 channel_id:{UNIQUEID}",
        f"DTMF_END digit:E channel_id:{UNIQUEID}",
        f"DTMF_END digit:! channel_id:{UNIQUEID}",
        '{"event":"DTMF_END","channel_id":"1.2","digit":5}',
        '{"event":"DTMF_END","channel_id":"1.2","digit":""}',
        '{"event":"DTMF_END","channel_id":"1.2"}',
    ],
)
def test_bad_dtmf(text: str) -> None:
    with pytest.raises(wire.ControlError) as caught:
        wire.parse_control(text)
    assert caught.value.reason == "bad_dtmf"


# --- STATUS and ERROR -------------------------------------------------------------------


def test_status_both_formats() -> None:
    plain = (
        f"STATUS channel_id:{UNIQUEID} queue_length:12 xon_level:800 xoff_level:900 "
        "queue_full:false bulk_media:true media_paused:false"
    )
    as_json = (
        f'{{"event":"STATUS","channel_id":"{UNIQUEID}","queue_length":12,"xon_level":800,'
        '"xoff_level":900,"queue_full":false,"bulk_media":true,"media_paused":false}'
    )
    for text in (plain, as_json):
        event = wire.parse_control(text)
        assert isinstance(event, wire.Status)
        assert event.channel_id == UNIQUEID
        assert (event.queue_length, event.xon_level, event.xoff_level) == (12, 800, 900)
        assert (event.queue_full, event.bulk_media, event.media_paused) == (False, True, False)
        assert event.fields["queue_length"] == "12" and event.fields["bulk_media"] == "true"


@pytest.mark.parametrize(
    "text",
    [
        "STATUS channel_id:1.2 queue_length:many",
        "STATUS channel_id:1.2 queue_full:yes",
        '{"event":"STATUS","channel_id":"1.2","queue_length":-1}',
        '{"event":"STATUS","channel_id":"1.2","media_paused":1}',
    ],
)
def test_bad_status(text: str) -> None:
    with pytest.raises(wire.ControlError):
        wire.parse_control(text)


def test_error_event_both_formats() -> None:
    # "%s channel_id:%s error_text:%s"; some texts end in "\n"
    plain = (
        f"ERROR channel_id:{UNIQUEID} error_text:SET_MEDIA_DIRECTION only supports JSON format.\n"
    )
    assert wire.parse_control(plain) == wire.ErrorEvent(
        "SET_MEDIA_DIRECTION only supports JSON format.", UNIQUEID
    )
    as_json = (
        f'{{"event":"ERROR","channel_id":"{UNIQUEID}","error_text":"Unable to parse JSON command"}}'
    )
    assert wire.parse_control(as_json) == wire.ErrorEvent("Unable to parse JSON command", UNIQUEID)
    assert wire.parse_control(
        f"ERROR channel_id:{UNIQUEID} error_text:MARK_MEDIA not supported in passthrough mode"
    ) == wire.ErrorEvent("MARK_MEDIA not supported in passthrough mode", UNIQUEID)


# --- unknown and malformed -------------------------------------------------------------


def test_unknown_events_are_kept() -> None:
    plain = "MEDIA_PAUSED channel_id:1.2 reason:app queued"
    assert wire.parse_control(plain) == wire.UnknownEvent(
        "MEDIA_PAUSED", {"channel_id": "1.2", "reason": "app"}, plain
    )
    as_json = '{"event":"HANGUP","channel_id":7,"cause":16,"ok":true}'
    assert wire.parse_control(as_json) == wire.UnknownEvent(
        "HANGUP", {"channel_id": "7", "cause": "16", "ok": "true"}, as_json
    )


def test_event_names_are_case_sensitive_like_asterisk() -> None:
    event = wire.parse_control("media_xon")
    assert isinstance(event, wire.UnknownEvent) and event.name == "media_xon"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("  \r\n ", "empty"),
        ("{", "bad_json"),
        ('{"event":"MEDIA_XON",}', "bad_json"),
        ('{"event":"MEDIA_XON"} trailing', "bad_json"),
        ("[" * 2000 + "]" * 2000, "bad_event"),  # not "{": taken as plain text
        ('{"a":' + "[" * 2000 + "]" * 2000 + "}", "bad_json"),  # too deep for the json module
        ('{"channel_id":"1.2"}', "no_event"),
        ('{"event":""}', "no_event"),
        ('{"event":5}', "no_event"),
        ('{"event":"MEDIA XON"}', "bad_event"),
        ("123 channel_id:1", "bad_event"),
        ("MEDIA-XON", "bad_event"),
        ("x" * 4097, "too_long"),
        ("MEDIA_XON " + " " * 5000, "too_long"),
    ],
)
def test_malformed_messages(text: str, reason: str) -> None:
    with pytest.raises(wire.ControlError) as caught:
        wire.parse_control(text)
    assert caught.value.reason == reason


def test_length_limit_is_inclusive_and_adjustable() -> None:
    text = MEDIA_START_PLAIN + " pad:" + "x" * (4096 - len(MEDIA_START_PLAIN) - 5)
    assert len(text) == 4096
    assert isinstance(wire.parse_control(text), wire.MediaStart)
    with pytest.raises(wire.ControlError):
        wire.parse_control(MEDIA_START_PLAIN, max_chars=50)
    long_text = "X_EVENT pad:" + "x" * 5000
    assert isinstance(wire.parse_control(long_text, max_chars=6000), wire.UnknownEvent)


def test_control_error_is_a_value_error_and_a_wire_error() -> None:
    with pytest.raises(ValueError, match="bad_json"):
        wire.parse_control("{nope")
    error = wire.ControlError("a second MEDIA_START")
    assert isinstance(error, WireError) and str(error) == "a second MEDIA_START"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parse_control_never_fails_other_than_control_error(text: str) -> None:
    try:
        event = wire.parse_control(text)
    except wire.ControlError:
        return
    assert isinstance(event, wire.ControlEvent)


# --- commands ----------------------------------------------------------------------------

BARE_COMMANDS = sorted(wire.COMMANDS - {"SET_MEDIA_DIRECTION"})


@pytest.mark.parametrize("name", BARE_COMMANDS)
def test_bare_commands(name: str) -> None:
    assert wire.encode_command(name, "plain") == name
    assert wire.encode_command(name, "json") == f'{{"command":"{name}"}}'
    for fmt in ("plain", "json"):
        assert asterisk_reads(wire.encode_command(name, fmt), fmt) == (name, {})


@pytest.mark.parametrize("name", ["MARK_MEDIA", "STOP_MEDIA_BUFFERING"])
def test_commands_with_a_correlation_id(name: str) -> None:
    assert wire.encode_command(name, "plain", correlation_id="prompt-7") == f"{name} prompt-7"
    assert (
        wire.encode_command(name, "json", correlation_id="prompt-7")
        == f'{{"command":"{name}","correlation_id":"prompt-7"}}'
    )


def test_set_media_direction_is_json_only() -> None:
    assert (
        wire.encode_command("SET_MEDIA_DIRECTION", "json", direction="in")
        == '{"command":"SET_MEDIA_DIRECTION","direction":"in"}'
    )
    with pytest.raises(ValueError, match="JSON"):
        wire.encode_command("SET_MEDIA_DIRECTION", "plain", direction="in")
    with pytest.raises(ValueError):
        wire.encode_command("SET_MEDIA_DIRECTION", "json", direction="sideways")
    with pytest.raises(ValueError):
        wire.encode_command("SET_MEDIA_DIRECTION", "json")


@pytest.mark.parametrize(
    ("name", "fmt", "fields"),
    [
        ("PLAY", "plain", {}),
        ("flush_media", "plain", {}),
        ("MEDIA_START", "json", {}),
        ("FLUSH_MEDIA", "xml", {}),
        ("FLUSH_MEDIA", "plain", {"correlation_id": "x"}),
        ("MARK_MEDIA", "plain", {"direction": "in"}),
        ("MARK_MEDIA", "plain", {"correlation_id": "a\nHANGUP"}),
        ("MARK_MEDIA", "json", {"correlation_id": "a\r"}),
        ("MARK_MEDIA", "json", {"correlation_id": "a\u2028b"}),
        ("MARK_MEDIA", "plain", {"correlation_id": "tab\there"}),
        ("MARK_MEDIA", "plain", {"correlation_id": " padded"}),
        ("MARK_MEDIA", "plain", {"correlation_id": ""}),
        ("MARK_MEDIA", "plain", {"correlation_id": "x" * 118}),
        ("MARK_MEDIA", "json", {"correlation_id": "x" * 100}),
        ("MARK_MEDIA", "json", {"correlation_id": "é" * 30}),  # \u00e9 escapes: 6 bytes each
    ],
)
def test_commands_asterisk_would_reject(name: str, fmt: str, fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        wire.encode_command(name, fmt, **fields)  # type: ignore[arg-type]


def test_longest_plain_command_fits_asterisks_128_bytes() -> None:
    text = wire.encode_command("MARK_MEDIA", "plain", correlation_id="x" * 117)
    assert len(text) == 128


_IDS = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=20
).filter(lambda s: s == s.strip())


@settings(max_examples=200, deadline=None)
@given(correlation_id=_IDS, fmt=st.sampled_from(["plain", "json"]))
def test_mark_round_trip_through_asterisk(correlation_id: str, fmt: wire.ControlFormat) -> None:
    """MARK_MEDIA as Asterisk reads it, then MEDIA_MARK_PROCESSED as Asterisk writes it."""
    try:
        text = wire.encode_command("MARK_MEDIA", fmt, correlation_id=correlation_id)
    except ValueError:
        assert fmt == "json"  # only \uXXXX escapes can take 20 characters past 128 bytes
        return
    command, args = asterisk_reads(text, fmt)
    assert command == "MARK_MEDIA" and args == {"correlation_id": correlation_id}
    if fmt == "json":
        echoed = json.dumps(
            {
                "event": "MEDIA_MARK_PROCESSED",
                "channel_id": UNIQUEID,
                "correlation_id": args["correlation_id"],
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
    else:
        echoed = f"MEDIA_MARK_PROCESSED {args['correlation_id']}"
    event = wire.parse_control(echoed)
    assert isinstance(event, wire.MediaMarkProcessed)
    assert event.correlation_id == correlation_id


# --- media -------------------------------------------------------------------------------


def samples(pcm: bytes) -> list[int]:
    return [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]


def test_ulaw_known_values() -> None:
    pcm = wire.decode_media(bytes([0xFF, 0x7F, 0x00, 0x80, 0xF0, 0x70]), "ulaw")
    assert samples(pcm) == [0, 0, -32124, 32124, 120, -120]
    assert wire.encode_media(FOUR_SAMPLES, "ulaw") == bytes([0xFF, 0x7E, 0x80, 0x00])  # as audioop


def test_alaw_known_values() -> None:
    pcm = wire.decode_media(bytes([0xD5, 0x55, 0xAA, 0x2A, 0x80, 0x00]), "alaw")
    assert samples(pcm) == [8, -8, 32256, -32256, 5504, -5504]
    assert wire.encode_media(FOUR_SAMPLES, "alaw") == bytes([0xD5, 0x55, 0xAA, 0x2A])


def test_g711_codes_survive_decode_and_encode() -> None:
    codes = bytes(range(256))
    assert wire.encode_media(wire.decode_media(codes, "alaw"), "alaw") == codes
    ulaw = bytes(c for c in range(256) if c != 0x7F)  # 0x7f is -0, encoded back as 0xff
    assert wire.encode_media(wire.decode_media(ulaw, "ulaw"), "ulaw") == ulaw


def test_g711_decode_is_monotonic_per_sign() -> None:
    alaw = samples(wire.alaw_to_pcm(bytes(c ^ 0x55 for c in range(128, 256))))
    assert alaw == sorted(alaw) and len(set(alaw)) == 128 and min(alaw) > 0


@pytest.mark.parametrize("codec", ["slin", "slin16", "slin48", "slin192"])
def test_slin_is_passed_through(codec: str) -> None:
    assert wire.decode_media(FOUR_SAMPLES, codec) == FOUR_SAMPLES
    assert wire.encode_media(FOUR_SAMPLES, codec) == FOUR_SAMPLES
    assert wire.decode_media(b"", codec) == b""


@pytest.mark.parametrize("codec", ["slin", "slin16", "slin44"])
def test_odd_slin_payload(codec: str) -> None:
    with pytest.raises(wire.ControlError) as caught:
        wire.decode_media(FOUR_SAMPLES[:3], codec)
    assert caught.value.reason == "odd_media"


def test_odd_pcm_cannot_be_encoded() -> None:
    for codec in ("slin16", "ulaw", "alaw"):
        with pytest.raises(wire.ControlError):
            wire.encode_media(b"\x00\x01\x02", codec)


def test_g711_payloads_of_any_length_decode() -> None:
    assert len(wire.decode_media(b"\xff" * 161, "ulaw")) == 322
    assert len(wire.decode_media(b"\xd5" * 3, "alaw")) == 6


@pytest.mark.parametrize("codec", ["opus", "g722", "", "SLIN16"])
def test_unsupported_media_codec(codec: str) -> None:
    with pytest.raises(wire.ControlError) as caught:
        wire.decode_media(FOUR_SAMPLES, codec)
    assert caught.value.reason == "unsupported_codec"
    with pytest.raises(wire.ControlError):
        wire.encode_media(FOUR_SAMPLES, codec)
