"""The ESL codec, pure: golden bytes written by hand from mod_event_socket.c's format strings
(not by the encoder under test), every split of the stream, and broken input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot_pbx.pbx import esl_codec as esl

# listener_run: "Content-Type: command/reply\nReply-Text: %s\n\n"
REPLY_OK = b"Content-Type: command/reply\nReply-Text: +OK Events Enabled\n\n"
# api_exec: "Content-Type: api/response\nContent-Length: %d\n\n" + output
API_OK = b"Content-Type: api/response\nContent-Length: 4\n\n+OK\n"
# read_packet: "Content-Length: %d\nContent-Type: text/event-%s\n\n" + switch_event_serialize
DTMF_EVENT_BODY = (
    b"Event-Name: DTMF\n"
    b"Unique-ID: 0b8e4c1e-1f2a-4b3c-8d4e-5f6a7b8c9d0e\n"
    b"Caller-Caller-ID-Name: Ada%20Lovelace\n"
    b"DTMF-Digit: %23\n"
    b"DTMF-Duration: 800\n"
    b"\n"
)
DTMF_EVENT = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(DTMF_EVENT_BODY)
DTMF_EVENT += DTMF_EVENT_BODY
# An event with a body (BACKGROUND_JOB): "Content-Length: %d\n\n%s" ends the serialization.
JOB_EVENT_BODY = b"Event-Name: BACKGROUND_JOB\nJob-UUID: 42\nContent-Length: 9\n\n+OK done\n"
JOB_EVENT = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(JOB_EVENT_BODY)
JOB_EVENT += JOB_EVENT_BODY
# read_packet, channel down with linger.
LINGER = (
    b"Content-Type: text/disconnect-notice\n"
    b"Controlled-Session-UUID: 0b8e4c1e-1f2a-4b3c-8d4e-5f6a7b8c9d0e\n"
    b"Content-Disposition: linger\n"
    b"Channel-Name: sofia/internal/1001\n"
    b"Linger-Time: -1\n"
    b"Content-Length: 0\n\n"
)
# send_disconnect.
GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
DISCONNECT = (
    b"Content-Type: text/disconnect-notice\n"
    b"Controlled-Session-UUID: 0b8e4c1e-1f2a-4b3c-8d4e-5f6a7b8c9d0e\n"
    b"Content-Disposition: disconnect\n"
    b"Content-Length: %d\n\n" % len(GOODBYE)
) + GOODBYE
# parse_command "connect": the CHANNEL_DATA event, URL-encoded, no outer framing.
CONNECT_REPLY = (
    b"Event-Name: CHANNEL_DATA\n"
    b"Unique-ID: 0b8e4c1e-1f2a-4b3c-8d4e-5f6a7b8c9d0e\n"
    b"Channel-Read-Codec-Name: PCMU\n"
    b"Channel-Read-Codec-Rate: 8000\n"
    b"Caller-Caller-ID-Number: %2B15551234567\n"
    b"variable_sip_from_display: Ada%20%22Countess%22\n"
    b"Content-Type: command/reply\n"
    b"Reply-Text: %2BOK%0A\n"
    b"Socket-Mode: async\n"
    b"Control: full\n"
    b"\n"
)
STREAM = REPLY_OK + CONNECT_REPLY + API_OK + DTMF_EVENT + JOB_EVENT + LINGER + DISCONNECT


def test_golden_messages() -> None:
    messages = esl.Parser().feed(STREAM)
    assert [m.content_type for m in messages] == [
        "command/reply",
        "command/reply",
        "api/response",
        "text/event-plain",
        "text/event-plain",
        "text/disconnect-notice",
        "text/disconnect-notice",
    ]
    reply, connect, api, dtmf, job, linger, disconnect = messages
    assert reply.reply_text == "+OK Events Enabled" and reply.body == b""
    assert connect.reply_text == "+OK"  # "%2BOK%0A" decoded, the newline stripped
    assert connect.get("caller-caller-id-number") == "+15551234567"  # case-insensitive
    assert connect.get("variable_sip_from_display") == 'Ada "Countess"'
    assert connect.get("Socket-Mode") == "async" and connect.get("Control") == "full"
    assert api.text == "+OK\n"
    event = esl.parse_event(dtmf)
    assert event.event_name == "DTMF"
    assert event.get("DTMF-Digit") == "#" and event.get("Caller-Caller-ID-Name") == "Ada Lovelace"
    job_event = esl.parse_event(job)
    assert job_event.get("Job-UUID") == "42" and job_event.body == b"+OK done\n"
    assert linger.get("Content-Disposition") == "linger" and linger.body == b""
    assert disconnect.get("Content-Disposition") == "disconnect" and disconnect.body == GOODBYE


def test_every_split_gives_the_same_messages() -> None:
    whole = esl.Parser().feed(STREAM)
    for cut in range(1, len(STREAM)):
        parser = esl.Parser()
        got = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
        assert got == whole, cut
        parser.check_eof()
    parser = esl.Parser()
    one_by_one = [m for i in range(len(STREAM)) for m in parser.feed(STREAM[i : i + 1])]
    assert one_by_one == whole


def test_stray_newlines_between_messages_are_skipped() -> None:
    assert len(esl.Parser().feed(b"\n\r\n" + REPLY_OK + b"\n" + API_OK)) == 2


def test_encoders_reproduce_the_golden_bytes() -> None:
    assert esl.encode_reply("+OK Events Enabled") == REPLY_OK
    assert esl.encode_api_response("+OK\n") == API_OK
    assert (
        esl.encode_disconnect_notice(
            "0b8e4c1e-1f2a-4b3c-8d4e-5f6a7b8c9d0e",
            linger_s=-1,
            channel_name="sofia/internal/1001",
        )
        == LINGER
    )
    assert (
        esl.encode_disconnect_notice("0b8e4c1e-1f2a-4b3c-8d4e-5f6a7b8c9d0e", GOODBYE.decode())
        == DISCONNECT
    )
    headers = [
        ("Event-Name", "DTMF"),
        ("Unique-ID", "0b8e4c1e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"),
        ("Caller-Caller-ID-Name", "Ada Lovelace"),
        ("DTMF-Digit", "#"),
        ("DTMF-Duration", "800"),
    ]
    assert esl.encode_event_plain(headers) == DTMF_EVENT
    job = [("Event-Name", "BACKGROUND_JOB"), ("Job-UUID", "42")]
    assert esl.encode_event_plain(job, "+OK done\n") == JOB_EVENT
    connect = [
        ("Event-Name", "CHANNEL_DATA"),
        ("Unique-ID", "0b8e4c1e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"),
        ("Channel-Read-Codec-Name", "PCMU"),
        ("Channel-Read-Codec-Rate", "8000"),
        ("Caller-Caller-ID-Number", "+15551234567"),
        ("variable_sip_from_display", 'Ada "Countess"'),
        ("Content-Type", "command/reply"),
        ("Reply-Text", "+OK\n"),
        ("Socket-Mode", "async"),
        ("Control", "full"),
    ]
    assert esl.encode_connect_reply(connect) == CONNECT_REPLY
    # An empty api output: api_exec sends "-ERR no reply\n".
    assert esl.encode_api_response("").endswith(b"\n\n-ERR no reply\n")


def test_url_encoding_follows_switch_url_unsafe() -> None:
    assert esl.url_encode("a b+c:d/e.f_g-h~") == "a%20b%2Bc%3Ad/e.f_g-h~"
    assert esl.url_encode("é\t%") == "%C3%A9%09%25"
    assert esl.url_encode("") == ""


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True),
            st.text(min_size=1, max_size=40),
        ),
        min_size=1,
        max_size=8,
    ),
    st.text(max_size=60),
)
def test_event_round_trip(pairs: list[tuple[str, str]], body: str) -> None:
    headers = [("Event-Name", "CUSTOM"), *[(f"X-{n}", v) for n, v in pairs]]
    (message,) = esl.Parser().feed(esl.encode_event_plain(headers, body))
    event = esl.parse_event(message)
    for name, _value in headers:
        first = next(v for n, v in headers if n.lower() == name.lower())
        assert event.get(name) == first
    assert event.body == body.encode("utf-8")


def test_commands_as_read_packet_reads_them() -> None:
    assert esl.encode_command("connect") == b"connect\n\n"
    assert esl.encode_api("uuid_break abc") == b"api uuid_break abc\n\n"
    assert esl.encode_sendmsg("hangup", {"hangup-cause": "NORMAL_CLEARING"}) == (
        b"sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING\n\n"
    )
    assert esl.encode_command("sendmsg", {"a": "b"}, b"xyz") == (
        b"sendmsg\na: b\nContent-Length: 3\n\nxyz"
    )


@pytest.mark.parametrize(
    ("command", "headers"),
    [
        ("api uuid_kill x\nexit", None),  # a second command smuggled in
        ("sendmsg", {"execute-app-arg": "x\n\napi uuid_kill y"}),
        ("sendmsg", {"bad\nname": "x"}),
        ("sendmsg", {"a:b": "x"}),
    ],
)
def test_commands_refuse_line_breaks(command: str, headers: dict[str, str] | None) -> None:
    with pytest.raises(ValueError):
        esl.encode_command(command, headers)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"Content-Type: command/reply\nthis line has no colon\n\n", "malformed_header"),
        (b"Content-Type: command/reply\n: no name\n\n", "malformed_header"),
        (b" Content-Type: command/reply\n\n", "malformed_header"),
        (b"Reply-Text: +OK\n\n", "missing_content_type"),
        (b"Content-Type: api/response\n\n+OK\n", "missing_content_length"),
        (b"Content-Type: text/event-plain\n\nEvent-Name: DTMF\n\n", "missing_content_length"),
        (b"Content-Type: api/response\nContent-Length: -4\n\n", "bad_content_length"),
        (b"Content-Type: api/response\nContent-Length: 4x\n\n", "bad_content_length"),
        (b"Content-Type: api/response\nContent-Length: 99999999999\n\n", "bad_content_length"),
        (b"Content-Type: api/response\nContent-Length: 999999999\n\n", "body_too_large"),
    ],
)
def test_bad_input_is_a_protocol_error(data: bytes, reason: str) -> None:
    parser = esl.Parser()
    with pytest.raises(esl.ProtocolError) as caught:
        parser.feed(data)
    assert caught.value.reason == reason
    with pytest.raises(esl.ProtocolError):  # and the parser stays failed
        parser.feed(REPLY_OK)


def test_header_too_large_is_refused_before_the_end_of_headers() -> None:
    parser = esl.Parser(max_header_bytes=1024)
    with pytest.raises(esl.ProtocolError) as caught:
        parser.feed(b"Content-Type: command/reply\nX-Junk: " + b"a" * 2000)
    assert caught.value.reason == "header_too_large"


@pytest.mark.parametrize(
    ("data", "reason"),
    [(API_OK[:-2], "truncated_body"), (REPLY_OK[:-1], "truncated_headers")],
)
def test_eof_inside_a_message(data: bytes, reason: str) -> None:
    parser = esl.Parser()
    assert parser.feed(data) == []
    with pytest.raises(esl.ProtocolError) as caught:
        parser.check_eof()
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "body",
    [
        b"Event-Name: DTMF\nbroken line\n\n",
        b"Unique-ID: x\n\n",  # no Event-Name
        b"Event-Name: X\nContent-Length: 10\n\nshort",
        b"Event-Name: X\n\ntrailing garbage",
        b"Event-Name: X",  # no end of headers
    ],
)
def test_malformed_events(body: bytes) -> None:
    message = esl.Message.of([("Content-Type", "text/event-plain")], body)
    with pytest.raises(esl.ProtocolError) as caught:
        esl.parse_event(message)
    assert caught.value.reason == "malformed_event"


def test_non_utf8_and_duplicates_do_not_crash() -> None:
    data = b"Content-Type: command/reply\nReply-Text: +OK \xff\xfe\nReply-Text: second\n\n"
    (message,) = esl.Parser().feed(data)
    assert message.reply_text.startswith("+OK") and "second" not in message.reply_text
