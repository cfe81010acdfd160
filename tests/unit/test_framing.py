"""Unit tests for proxy.wire.framing: typed-message and startup-packet framing, bytes only."""

from __future__ import annotations

import random
import struct

import pytest

from proxy.errors import ProtocolViolation
from proxy.wire import messages as m
from proxy.wire.framing import (
    MAX_MESSAGE_LENGTH,
    MAX_STARTUP_LENGTH,
    Framer,
    StartupFramer,
)

GIB = 1 << 30

# A realistic client -> server and server -> client mix, including empty bodies and a body
# that itself contains bytes that look like message headers.
MESSAGES: list[tuple[int, bytes]] = [
    (ord("Q"), b"SELECT 1\x00"),
    (ord("P"), b"s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"),
    (ord("B"), b"\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x00"),
    (ord("S"), b""),
    (ord("H"), b""),
    (ord("d"), b"Q\x00\x00\x00\x05X" * 40),
    (ord("Z"), b"I"),
    (ord("D"), b"\x00\x01\xff\xff\xff\xff"),
    (ord("X"), b""),
]


def encode(msgs: list[tuple[int, bytes]]) -> bytes:
    return b"".join(m.message(t, body) for t, body in msgs)


STREAM = encode(MESSAGES)


def run_chunks(framer: Framer, chunks: list[bytes]) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Feed `chunks`; return the regions and (type, body) of every frame, checking that each
    region holds exactly its frames back to back."""
    regions: list[bytes] = []
    out: list[tuple[int, bytes]] = []
    for chunk in chunks:
        region, frames = framer.feed(chunk)
        pos = 0
        for mtype, start, end in frames:
            # Frames tile the region: header at pos, body right after, next frame at end.
            assert start == pos + 5
            assert region[pos] == mtype
            assert struct.unpack_from("!I", region, pos + 1)[0] == end - pos - 1
            out.append((mtype, region[start:end]))
            pos = end
        assert pos == len(region), "region must hold exactly the complete messages"
        if not frames:
            assert region == b""
        regions.append(region)
    return regions, out


def random_chunks(data: bytes, rng: random.Random, max_size: int) -> list[bytes]:
    chunks = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, max_size)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


# ------------------------------------------------------------------------------- Framer


def test_whole_stream_in_one_feed() -> None:
    framer = Framer()
    region, frames = framer.feed(STREAM)
    assert region == STREAM
    assert [(t, region[s:e]) for t, s, e in frames] == MESSAGES
    assert framer.buffered == 0


def test_one_byte_at_a_time() -> None:
    framer = Framer()
    chunks = [STREAM[i : i + 1] for i in range(len(STREAM))]
    regions, out = run_chunks(framer, chunks)
    assert out == MESSAGES
    assert b"".join(regions) == STREAM
    # A region is non-empty exactly when the last byte of a message arrived.
    assert sum(1 for r in regions if r) == len(MESSAGES)
    assert framer.buffered == 0


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_split_at_every_byte_boundary(split: int) -> None:
    framer = Framer()
    regions, out = run_chunks(framer, [STREAM[:split], STREAM[split:]])
    assert out == MESSAGES
    assert b"".join(regions) == STREAM
    assert framer.buffered == 0


@pytest.mark.parametrize("seed", range(25))
def test_random_chunkings(seed: int) -> None:
    rng = random.Random(seed)
    chunks = random_chunks(STREAM, rng, max_size=rng.choice([3, 7, 16, 64, 300]))
    framer = Framer()
    regions, out = run_chunks(framer, chunks)
    assert out == MESSAGES
    assert b"".join(regions) == STREAM
    assert framer.buffered == 0


def test_random_messages_random_chunkings() -> None:
    rng = random.Random(20240601)
    for _ in range(50):
        msgs = [
            (rng.randrange(32, 127), rng.randbytes(rng.choice([0, 1, 4, 5, 17, 200])))
            for _ in range(rng.randint(1, 20))
        ]
        data = encode(msgs)
        regions, out = run_chunks(Framer(), random_chunks(data, rng, max_size=40))
        assert out == msgs
        assert b"".join(regions) == data


def test_trailing_partial_message_is_kept() -> None:
    framer = Framer()
    whole = m.query("SELECT 1")
    partial = m.query("SELECT 2")[:7]
    region, frames = framer.feed(whole + partial)
    assert region == whole
    assert len(frames) == 1
    assert framer.buffered == len(partial)
    region, frames = framer.feed(m.query("SELECT 2")[7:])
    assert region == m.query("SELECT 2")
    assert [(t, region[s:e]) for t, s, e in frames] == [(ord("Q"), b"SELECT 2\x00")]
    assert framer.buffered == 0


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_partial_header_is_kept(size: int) -> None:
    framer = Framer()
    msg = m.query("x")
    region, frames = framer.feed(msg[:size])
    assert (region, frames) == (b"", [])
    assert framer.buffered == size
    region, frames = framer.feed(msg[size:])
    assert region == msg
    assert frames == [(ord("Q"), 5, len(msg))]


def test_empty_feed() -> None:
    framer = Framer()
    assert framer.feed(b"") == (b"", [])
    framer.feed(b"Q\x00")
    assert framer.feed(b"") == (b"", [])
    assert framer.buffered == 2


def test_minimum_length_four_is_an_empty_body() -> None:
    region, frames = Framer().feed(b"S\x00\x00\x00\x04")
    assert frames == [(ord("S"), 5, 5)]
    assert region[5:5] == b""


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_length_below_four_is_a_protocol_violation(length: int) -> None:
    framer = Framer()
    with pytest.raises(ProtocolViolation) as info:
        framer.feed(b"Q" + struct.pack("!I", length) + b"body")
    assert info.value.sqlstate == "08P01"
    assert str(length) in info.value.message


@pytest.mark.parametrize("length", [GIB, GIB + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_length_over_one_gib_is_a_protocol_violation(length: int) -> None:
    with pytest.raises(ProtocolViolation) as info:
        Framer().feed(b"d" + struct.pack("!I", length))
    assert info.value.sqlstate == "08P01"


def test_largest_allowed_length_is_just_buffered() -> None:
    assert MAX_MESSAGE_LENGTH == GIB - 1
    framer = Framer()
    header = b"d" + struct.pack("!I", MAX_MESSAGE_LENGTH)
    assert framer.feed(header + b"abc") == (b"", [])
    assert framer.buffered == len(header) + 3


def test_bad_length_detected_from_header_alone_when_fed_bytewise() -> None:
    framer = Framer()
    bad = b"Q" + struct.pack("!I", 2)
    for byte in bad[:-1]:
        assert framer.feed(bytes([byte])) == (b"", [])
    with pytest.raises(ProtocolViolation):
        framer.feed(bad[-1:])


def test_bad_length_after_good_messages() -> None:
    framer = Framer()
    with pytest.raises(ProtocolViolation):
        framer.feed(m.query("SELECT 1") + b"Q\x00\x00\x00\x00")


def test_custom_max_length() -> None:
    framer = Framer(max_length=100)
    region, frames = framer.feed(m.message(ord("p"), b"x" * 96))
    assert len(frames) == 1 and len(region) == 101
    with pytest.raises(ProtocolViolation):
        Framer(max_length=100).feed(m.message(ord("p"), b"x" * 97))


# ------------------------------------------------------------------------- StartupFramer


def feed_bytewise(framer: StartupFramer, data: bytes) -> list[bytes]:
    packets = []
    for i in range(len(data)):
        packet = framer.feed(data[i : i + 1])
        if packet is not None:
            packets.append(packet)
    return packets


def test_startup_message() -> None:
    raw = m.startup_message({"user": "alice", "database": "app"})
    packet = StartupFramer().feed(raw)
    assert packet == raw[4:]
    assert m.decode_startup(packet) == (m.PROTOCOL_V3, {"user": "alice", "database": "app"})


def test_startup_message_bytewise() -> None:
    raw = m.startup_message({"user": "alice", "application_name": "psql"})
    framer = StartupFramer()
    assert feed_bytewise(framer, raw) == [raw[4:]]
    assert framer.take_rest() == b""


@pytest.mark.parametrize("seed", range(10))
def test_startup_message_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    raw = m.startup_message({"user": "u" * 50, "database": "d", "options": "-c a=b"})
    framer = StartupFramer()
    packets = [p for c in random_chunks(raw, rng, 9) if (p := framer.feed(c)) is not None]
    assert packets == [raw[4:]]


def test_ssl_request() -> None:
    framer = StartupFramer()
    packet = framer.feed(m.ssl_request())
    assert packet == struct.pack("!i", m.SSL_REQUEST)
    assert m.decode_int32(packet) == 80877103


def test_gssenc_request() -> None:
    packet = StartupFramer().feed(struct.pack("!ii", 8, m.GSSENC_REQUEST))
    assert m.decode_int32(packet) == 80877104


def test_cancel_request() -> None:
    packet = StartupFramer().feed(m.cancel_request(4242, -7))
    assert packet is not None and len(packet) == 12
    assert m.decode_int32(packet) == m.CANCEL_REQUEST
    assert m.decode_cancel(packet) == (4242, -7)


def test_partial_packets_return_none() -> None:
    framer = StartupFramer()
    raw = m.ssl_request()
    assert framer.feed(raw[:3]) is None  # not even a length yet
    assert framer.feed(raw[3:7]) is None
    assert framer.feed(raw[7:]) == raw[4:]


def test_bytes_after_packet_are_kept_for_take_rest() -> None:
    framer = StartupFramer()
    startup = m.startup_message({"user": "bob"})
    pipelined = m.query("SELECT 1")
    assert framer.feed(startup + pipelined) == startup[4:]
    assert framer.take_rest() == pipelined
    assert framer.take_rest() == b""


def test_ssl_request_then_startup_in_later_feed() -> None:
    framer = StartupFramer()
    assert framer.feed(m.ssl_request()) == m.ssl_request()[4:]
    assert framer.take_rest() == b""
    startup = m.startup_message({"user": "bob"})
    assert framer.feed(startup) == startup[4:]


def test_two_packets_in_one_chunk_come_out_one_per_feed() -> None:
    framer = StartupFramer()
    startup = m.startup_message({"user": "bob"})
    assert framer.feed(m.ssl_request() + startup) == m.ssl_request()[4:]
    assert framer.feed(b"") == startup[4:]


@pytest.mark.parametrize("length", [0, 1, 4, 7, MAX_STARTUP_LENGTH + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_invalid_startup_lengths(length: int) -> None:
    with pytest.raises(ProtocolViolation) as info:
        StartupFramer().feed(struct.pack("!I", length) + b"\x00" * 8)
    assert info.value.sqlstate == "08P01"


def test_invalid_startup_length_detected_from_four_bytes() -> None:
    framer = StartupFramer()
    assert framer.feed(b"\x00\x00") is None
    with pytest.raises(ProtocolViolation):
        framer.feed(b"\x00\x03")  # length 3


@pytest.mark.parametrize("length", [8, MAX_STARTUP_LENGTH])
def test_boundary_startup_lengths_are_accepted(length: int) -> None:
    raw = struct.pack("!I", length) + b"\x00" * (length - 4)
    assert StartupFramer().feed(raw) == b"\x00" * (length - 4)
