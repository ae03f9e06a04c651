#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/.

Seeds are valid forward-protocol vectors (every mode, every time encoding, the ack and
compression options, JSON requests) plus a few inputs the gateway must reject. The files
are deterministic: running the script again rewrites the same bytes.

    pip install msgpack zstandard
    python3 fuzz/make_corpus.py
"""

import gzip
import json
import os
import struct
import sys

import msgpack
import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

SECS = 1_700_000_000
NANOS = 123_456_789
TAG = "docker.3f2a9c81b0d4"


def pack(value):
    return msgpack.packb(value, use_bin_type=True)


def event_time(secs=SECS, nanos=NANOS):
    """EventTime as msgpack packs an 8-byte ext: fixext8 (0xd7 0x00 ...)."""
    return msgpack.ExtType(0, struct.pack(">II", secs, nanos))


class Raw:
    """Bytes spliced into the output as they are (for encodings msgpack won't choose)."""

    def __init__(self, data):
        self.data = data


def encode(value):
    """msgpack-encodes value; lists and dicts may hold Raw pieces."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, list):
        return array_header(len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        return map_header(len(value)) + b"".join(
            encode(k) + encode(v) for k, v in value.items()
        )
    return pack(value)


def array_header(n):
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def map_header(n):
    if n < 16:
        return bytes([0x80 | n])
    if n < 0x10000:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def ext8_time(secs=SECS, nanos=NANOS):
    """EventTime as ext8 (0xc7 0x08 0x00 ...), which some clients send."""
    return Raw(b"\xc7\x08\x00" + struct.pack(">II", secs, nanos))


def float32(f):
    return Raw(b"\xca" + struct.pack(">f", f))


def str32(data):
    return Raw(b"\xdb" + struct.pack(">I", len(data)) + data)


def str8(data):
    return Raw(b"\xd9" + struct.pack(">B", len(data)) + data)


def docker_record(i=0):
    return {
        "container_id": "3f2a9c81b0d4" + "0123456789abcdef" * 3 + "0123",
        "container_name": "/app-%d" % (i % 4),
        "source": "stdout",
        "log": "line %d: GET /api/v1/items 200 took 12ms" % i,
        "TENANT_ID": "t%d" % (i % 2),
        "SERVICE_ID": "s%d" % (i % 3),
    }


# Every time encoding the gateway accepts, and two it rejects.
TIMES = {
    "int_fix": 5,
    "int_u32": SECS,
    "int_u64": 1 << 40,
    "eventtime_fixext8": event_time(),
    "eventtime_ext8": ext8_time(),
    "float64": 1_700_000_000.5,
    "float32": float32(1.5e9),
    "nil": None,
    "zero": 0,
    "v15_array": [event_time(), {"k": "v"}],
    "bad_negative": -1,
    "bad_ext_type": msgpack.ExtType(5, b"\x00" * 8),
}


def entries(n, time=None):
    return [[event_time(SECS + i) if time is None else time, docker_record(i)] for i in range(n)]


def packed_stream(n, time=None):
    return b"".join(encode(e) for e in entries(n, time))


def gz(data, members=1):
    step = max(1, len(data) // members)
    parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    return b"".join(gzip.compress(p, mtime=0) for p in parts)


def zst(data, frames=1):
    step = max(1, len(data) // frames)
    parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    c = zstandard.ZstdCompressor(level=3)
    return b"".join(c.compress(p) for p in parts)


def msgpack_vectors():
    """name -> bytes of one connection's stream, valid protocol first."""
    v = {}
    rec = docker_record()
    # Message mode, with each option form.
    v["message_no_option"] = encode([TAG, event_time(), rec])
    v["message_option_empty"] = encode([TAG, event_time(), rec, {}])
    v["message_option_nil"] = encode([TAG, event_time(), rec, None])
    v["message_chunk_str"] = encode([TAG, event_time(), rec, {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ=="}])
    v["message_chunk_bin"] = encode([TAG, event_time(), rec, {"chunk": b"\x01\x02\x03"}])
    v["message_unknown_options"] = encode(
        [TAG, event_time(), rec, {"size": 1, "x": [1, 2], 7: "y", "chunk": "c1"}]
    )
    v["message_signal_metrics"] = encode([TAG, event_time(), rec, {"fluent_signal": 1}])
    v["message_signal_traces"] = encode([TAG, event_time(), rec, {"fluent_signal": 2, "chunk": "c"}])
    v["message_no_line_key"] = encode(["acme.web", SECS, {"msg": "x", "n": [1, 2.5, None, True]}])
    v["message_line_not_string"] = encode(["acme.web", SECS, {"log": {"nested": [1, {"a": b"\xff"}]}}])
    v["message_invalid_utf8"] = encode([TAG, SECS, {"log": b"hi\xff", b"\xfe": "k"}])
    v["message_non_string_keys"] = encode([TAG, SECS, {1: "a", None: "b", -3: event_time()}])
    v["message_tag_route"] = encode(["tenant1.service1.more", SECS, {"log": "routed by tag"}])
    for name, t in TIMES.items():
        v["message_time_" + name] = encode([TAG, t, rec])
    # Forward mode.
    v["forward_3"] = encode([TAG, entries(3)])
    v["forward_chunk"] = encode([TAG, entries(2), {"chunk": "Zm9yd2FyZA=="}])
    v["forward_empty"] = encode([TAG, []])
    for name, t in TIMES.items():
        v["forward_time_" + name] = encode([TAG, entries(2, t)])
    v["forward_extra_entry_items"] = encode([TAG, [[SECS, {"log": "a"}, "extra", 1]]])
    v["forward_bad_entries"] = encode(
        [TAG, [[SECS, "not a map"], "not an entry", [SECS], [event_time(), {"log": "ok"}]]]
    )
    # PackedForward: bin, str8, str32, and "text" compression.
    small = packed_stream(3)
    v["packed_bin"] = encode([TAG, small, {"size": 3}])
    v["packed_str8"] = encode([TAG, str8(packed_stream(1)), {"size": 1}])
    v["packed_str32"] = encode([TAG, str32(small), {"size": 3}])
    v["packed_text"] = encode([TAG, small, {"size": 3, "compressed": "text"}])
    v["packed_chunk"] = encode([TAG, small, {"size": 3, "chunk": "cGFja2Vk"}])
    for name, t in TIMES.items():
        v["packed_time_" + name] = encode([TAG, packed_stream(2, t)])
    v["packed_trailing_garbage"] = encode([TAG, small + b"\x92\xce", {"size": 4}])
    v["packed_reserved_byte"] = encode([TAG, b"\xc1" + small])
    # CompressedPackedForward.
    v["gzip_1"] = encode([TAG, gz(small), {"size": 3, "compressed": "gzip"}])
    v["gzip_members"] = encode([TAG, gz(small, 3), {"size": 3, "compressed": "gzip", "chunk": "Z3o="}])
    v["gzip_str32"] = encode([TAG, str32(gz(small)), {"compressed": "gzip"}])
    v["zstd_1"] = encode([TAG, zst(small), {"size": 3, "compressed": "zstd"}])
    v["zstd_frames"] = encode([TAG, zst(small, 3), {"size": 3, "compressed": "zstd", "chunk": "enN0"}])
    v["gzip_corrupt"] = encode([TAG, b"\x1f\x8b\x08\x00garbage", {"compressed": "gzip"}])
    v["zstd_corrupt"] = encode([TAG, b"\x28\xb5\x2f\xfdgarbage", {"compressed": "zstd"}])
    v["compressed_unknown"] = encode([TAG, small, {"compressed": "lz4"}])
    # Streams: several requests and heartbeats on one connection.
    v["stream_mixed"] = (
        b"\xc0"
        + v["message_chunk_str"]
        + b"\xc0"
        + v["forward_3"]
        + v["packed_bin"]
        + v["gzip_1"]
    )
    v["stream_heartbeats"] = b"\xc0" * 4
    # Bad requests: the connection closes.
    v["bad_reserved"] = b"\xc1"
    v["bad_reserved_nested"] = b"\x93\xa1t\xc1\x80"
    v["bad_not_array"] = encode({"tag": TAG})
    v["bad_short_array"] = encode([TAG])
    v["bad_tag_int"] = encode([1, SECS, rec])
    v["bad_second_map"] = encode([TAG, {}, {}])
    v["bad_option_not_map"] = encode([TAG, SECS, rec, "option"])
    v["bad_record_not_map"] = encode([TAG, SECS, "record"])
    v["bad_huge_str32"] = b"\x93\xa1t\xdb\xff\xff\xff\xff"
    v["bad_huge_array32"] = b"\xdd\xff\xff\xff\xff"
    v["bad_huge_map32"] = b"\x92\xa1t\xdf\x7f\xff\xff\xff"
    v["bad_deep"] = b"\x91" * 200 + b"\xc0"
    v["bad_truncated"] = v["forward_3"][:-7]
    return v


def json_vectors():
    v = {}
    rec = {"log": "hello", "TENANT_ID": "t1", "SERVICE_ID": "s1", "container_id": "abcdef0123456789"}
    v["json_message"] = json.dumps([TAG, SECS, rec]).encode()
    v["json_message_option"] = json.dumps([TAG, SECS, rec, {"chunk": "abc"}]).encode()
    v["json_message_float_time"] = json.dumps([TAG, 1700000000.25, rec]).encode()
    v["json_forward"] = json.dumps([TAG, [[SECS, rec], [SECS + 1, {"message": "m"}]]]).encode()
    v["json_stream"] = (
        json.dumps([TAG, SECS, rec]) + "\n  " + json.dumps([TAG, [[SECS, rec]]], indent=1) + "\r\n"
    ).encode()
    v["json_unicode"] = json.dumps([TAG, SECS, {"log": "caf\u00e9 \u2603 \ud83d\ude00 \"q\"\n"}]).encode()
    v["json_object"] = json.dumps({"tag": TAG}).encode()
    v["json_numbers"] = b"[\"t\", 1700000000, {\"a\": 1e308, \"b\": -0.0, \"c\": 18446744073709551615}]"
    v["json_bad_trailing_comma"] = b"[1,,]"
    v["json_truncated"] = json.dumps([TAG, SECS, rec]).encode()[:-3]
    v["json_deep"] = b"[" * 200 + b"]" * 200
    return v


def decompress_vectors():
    """First byte picks the cap (byte * 16); the rest is compressed data."""
    data = packed_stream(3)
    v = {}
    v["gzip_fits"] = b"\xff" + gz(data)
    v["gzip_members"] = b"\xff" + gz(data, 3)
    v["gzip_over_cap"] = b"\x02" + gz(data)
    v["gzip_zeros_bomb"] = b"\x01" + gzip.compress(b"\x00" * 65536, mtime=0)
    v["gzip_empty"] = b"\x10" + gzip.compress(b"", mtime=0)
    v["gzip_truncated"] = b"\xff" + gz(data)[:-6]
    v["zstd_fits"] = b"\xff" + zst(data)
    v["zstd_frames"] = b"\xff" + zst(data, 3)
    v["zstd_over_cap"] = b"\x02" + zst(data)
    v["zstd_zeros_bomb"] = b"\x01" + zst(b"\x00" * 65536)
    v["zstd_empty"] = b"\x10" + zst(b"")
    v["zstd_truncated"] = b"\xff" + zst(data)[:-4]
    v["zero_cap"] = b"\x00" + gz(b"x")
    v["garbage"] = b"\x40not compressed at all"
    return v


def write(target, vectors):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in sorted(vectors.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return len(vectors)


def main():
    mp = msgpack_vectors()
    js = json_vectors()
    counts = {
        "scan": write("scan", mp),
        "request": write("request", {**mp, **js}),
        "decompress": write("decompress", decompress_vectors()),
        "json": write("json", js),
    }
    for target, n in counts.items():
        print("%s: %d seeds" % (target, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
