"""AudioSocket codec: golden wire bytes both ways, broken input, any split of a stream.

The fixtures under ``tests/fixtures/audiosocket`` were written by hand (see the README there),
never by the encoder under test.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot_pbx.pbx import audiosocket_codec as wire

FIXTURES = Path(__file__).parent / "fixtures" / "audiosocket"
GOLDEN_UUID = uuid.UUID("4f6f3e8a-9c1b-4d2e-8a7b-0123456789ab")
FOUR_SAMPLES = bytes.fromhex("0100ffffff7f0080")  # [1, -1, 32767, -32768] s16le

KIND_RATES = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def decode_all(data: bytes, **kwargs: int) -> list[wire.Message]:
    decoder = wire.Decoder(**kwargs)
    messages = decoder.feed(data)
    decoder.check_eof()
    return messages


# --- golden bytes: every kind, encode and decode -------------------------------------------

GOLDEN: list[tuple[str, wire.Message, bytes]] = [
    ("hangup", wire.Hangup(), wire.encode_hangup()),
    ("uuid", wire.Uuid(GOLDEN_UUID), wire.encode_uuid(GOLDEN_UUID)),
    ("dtmf_5", wire.Dtmf("5"), wire.encode_dtmf("5")),
    ("dtmf_hash", wire.Dtmf("#"), wire.encode_dtmf("#")),
    ("error", wire.Error(4), wire.encode(wire.Kind.ERROR, b"\x04")),
    ("error_empty", wire.Error(None), wire.encode(wire.Kind.ERROR)),
    ("slin8_frame", wire.Audio(8000, bytes(320)), wire.encode_audio(bytes(320), 8000)),
    ("slin16_frame", wire.Audio(16000, bytes(640)), wire.encode_audio(bytes(640), 16000)),
] + [
    (f"slin_{kind:02x}", wire.Audio(rate, FOUR_SAMPLES), wire.encode_audio(FOUR_SAMPLES, rate))
    for kind, rate in KIND_RATES.items()
]


@pytest.mark.parametrize(("name", "message", "encoded"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_encoder_reproduces_golden_bytes(name: str, message: wire.Message, encoded: bytes) -> None:
    assert encoded == fixture(name)
    assert wire.encode_message(message) == fixture(name)


@pytest.mark.parametrize(("name", "message", "encoded"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_decoder_reads_golden_bytes(name: str, message: wire.Message, encoded: bytes) -> None:
    assert decode_all(fixture(name)) == [message]


def test_kind_values_match_res_audiosocket_h() -> None:
    assert {k.name: k.value for k in wire.Kind} == {
        "HANGUP": 0x00,
        "UUID": 0x01,
        "DTMF": 0x03,
        "SLIN_8K": 0x10,
        "SLIN_12K": 0x11,
        "SLIN_16K": 0x12,
        "SLIN_24K": 0x13,
        "SLIN_32K": 0x14,
        "SLIN_44K": 0x15,
        "SLIN_48K": 0x16,
        "SLIN_96K": 0x17,
        "SLIN_192K": 0x18,
        "ERROR": 0xFF,
    }
    assert {int(kind): rate for kind, rate in wire.AUDIO_RATES_HZ.items()} == KIND_RATES


def test_header_is_network_order_length() -> None:
    frame = wire.encode_audio(bytes(0x0102), 8000)
    assert frame[:3] == b"\x10\x01\x02"
    assert len(frame) == 3 + 0x0102


def test_golden_stream_decodes_in_order() -> None:
    stream = b"".join(fixture(n) for n in ("uuid", "slin8_frame", "dtmf_5", "slin_10", "hangup"))
    assert decode_all(stream) == [
        wire.Uuid(GOLDEN_UUID),
        wire.Audio(8000, bytes(320)),
        wire.Dtmf("5"),
        wire.Audio(8000, FOUR_SAMPLES),
        wire.Hangup(),
    ]


# --- the encoder refuses what Asterisk would reject ---------------------------------------


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (wire.encode_audio, (b"",)),  # zero-length audio tears an Asterisk call down
        (wire.encode_audio, (b"\x01\x02\x03",)),  # odd length
        (wire.encode_audio, (bytes(320), 11025)),  # no kind for that rate
        (wire.encode_dtmf, ("x",)),
        (wire.encode_dtmf, ("12",)),
        (wire.encode_dtmf, ("",)),
        (wire.encode, (wire.Kind.SLIN_8K, bytes(0x10000))),  # does not fit the length field
    ],
)
def test_encoder_rejects_invalid_messages(call: object, args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        call(*args)  # type: ignore[operator]


# --- broken input ---------------------------------------------------------------------------

BROKEN = [
    ("unknown_kind", "unknown_kind"),
    ("zero_length_audio", "empty_audio"),
    ("odd_length_audio", "odd_audio"),
    ("oversized_audio_header", "oversized_audio"),
    ("bad_uuid_length", "bad_uuid"),
    ("bad_dtmf_digit", "bad_dtmf"),
    ("bad_dtmf_length", "bad_dtmf"),
]


@pytest.mark.parametrize(("name", "reason"), BROKEN)
def test_broken_message_raises_with_reason(name: str, reason: str) -> None:
    decoder = wire.Decoder()
    with pytest.raises(wire.ProtocolError) as info:
        decoder.feed(fixture(name))
    assert info.value.reason == reason


@pytest.mark.parametrize(("name", "reason"), BROKEN)
def test_broken_message_after_good_ones_raises(name: str, reason: str) -> None:
    decoder = wire.Decoder()
    assert decoder.feed(fixture("uuid") + fixture("slin8_frame")) == [
        wire.Uuid(GOLDEN_UUID),
        wire.Audio(8000, bytes(320)),
    ]
    with pytest.raises(wire.ProtocolError) as info:
        # Byte by byte: the error must not depend on how the bad message arrives.
        for byte in fixture(name):
            decoder.feed(bytes([byte]))
    assert info.value.reason == reason


def test_decoder_is_unusable_after_an_error() -> None:
    decoder = wire.Decoder()
    with pytest.raises(wire.ProtocolError):
        decoder.feed(fixture("unknown_kind"))
    with pytest.raises(wire.ProtocolError) as info:
        decoder.feed(fixture("slin8_frame"))
    assert info.value.reason == "decoder_failed"


def test_oversized_audio_rejected_from_the_header_before_buffering() -> None:
    decoder = wire.Decoder(max_audio_bytes=640)
    assert decoder.feed(fixture("slin16_frame")) == [wire.Audio(16000, bytes(640))]
    with pytest.raises(wire.ProtocolError) as info:
        decoder.feed(b"\x10\x02\x82")  # 642 bytes announced, none sent yet
    assert info.value.reason == "oversized_audio"


@pytest.mark.parametrize(
    ("header", "reason"),
    [(b"\x01\xff\xff", "bad_uuid"), (b"\x01\x00\x11", "bad_uuid"), (b"\x03\xff\xff", "bad_dtmf")],
)
def test_fixed_size_kinds_with_a_wrong_length_fail_from_the_header(
    header: bytes, reason: str
) -> None:
    # Not after waiting for a payload that can never be valid.
    with pytest.raises(wire.ProtocolError) as info:
        wire.Decoder().feed(header)
    assert info.value.reason == reason


def test_oversized_limit_is_inclusive() -> None:
    assert decode_all(fixture("slin_10"), max_audio_bytes=8) == [wire.Audio(8000, FOUR_SAMPLES)]
    with pytest.raises(wire.ProtocolError) as info:
        decode_all(fixture("slin_10"), max_audio_bytes=6)
    assert info.value.reason == "oversized_audio"


@pytest.mark.parametrize("name", ["truncated_header", "truncated_payload"])
def test_truncation_is_reported_at_eof(name: str) -> None:
    decoder = wire.Decoder()
    assert decoder.feed(fixture(name)) == []  # could still be completed
    assert decoder.pending_bytes == len(fixture(name))
    with pytest.raises(wire.ProtocolError) as info:
        decoder.check_eof()
    assert info.value.reason == "truncated"


def test_clean_eof_is_not_an_error() -> None:
    decoder = wire.Decoder()
    decoder.feed(fixture("uuid") + fixture("slin8_frame"))
    decoder.check_eof()
    assert decoder.pending_bytes == 0


def test_protocol_error_carries_reason_and_detail() -> None:
    error = wire.ProtocolError("unknown_kind", "kind 0x42")
    assert error.reason == "unknown_kind"
    assert error.detail == "kind 0x42"
    assert str(error) == "unknown_kind: kind 0x42"


# --- any split of a valid stream yields the same messages ---------------------------------

dtmf_digits = st.sampled_from(sorted("0123456789*#ABCD"))
audio = st.builds(
    wire.Audio,
    st.sampled_from(sorted(KIND_RATES.values())),
    st.integers(min_value=1, max_value=400).flatmap(
        lambda n: st.binary(min_size=2 * n, max_size=2 * n)
    ),
)
messages = st.lists(
    st.one_of(
        audio,
        st.builds(wire.Dtmf, dtmf_digits),
        st.builds(wire.Error, st.one_of(st.none(), st.integers(0, 255))),
        st.just(wire.Hangup()),
        st.builds(wire.Uuid, st.uuids()),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(messages=messages, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_split_yields_the_same_messages(messages: list[wire.Message], cuts: list[int]) -> None:
    stream = b"".join(wire.encode_message(m) for m in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    decoder = wire.Decoder()
    decoded: list[wire.Message] = []
    for chunk in chunks:
        decoded += decoder.feed(chunk)
    decoder.check_eof()
    assert decoded == messages
    assert decoder.pending_bytes == 0


def test_byte_at_a_time_matches_whole() -> None:
    stream = b"".join(fixture(n) for n, _, _ in GOLDEN)
    decoder = wire.Decoder()
    one_by_one: list[wire.Message] = []
    for byte in stream:
        one_by_one += decoder.feed(bytes([byte]))
    decoder.check_eof()
    assert one_by_one == [m for _, m, _ in GOLDEN]
