"""Byte-vector builders and small client helpers for the Fluentd forward protocol.

Everything here builds exact bytes: where the msgpack encoding form matters (str8 versus
fixstr, bin16 versus bin8, fixext8 versus ext8, ...) the caller picks the form explicitly
with the helpers below and wraps the result in :class:`Raw` so the builders keep it as is.
"""

from __future__ import annotations

import base64
import datetime
import functools
import gzip
import json
import socket
import struct
import time
import zlib

import msgpack

ABSENT = object()  # marks an omitted option element


class Raw(bytes):
    """Bytes that are already msgpack-encoded and must be inserted verbatim."""


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def enc(obj) -> bytes:
    """Encode ``obj`` unless it is already encoded (:class:`Raw`)."""
    if isinstance(obj, Raw):
        return bytes(obj)
    return pack(obj)


def _b(s) -> bytes:
    return s.encode() if isinstance(s, str) else bytes(s)


# --------------------------------------------------------------------------- msgpack forms


def fixstr(s) -> Raw:
    b = _b(s)
    assert len(b) < 32
    return Raw(bytes([0xA0 | len(b)]) + b)


def str8(s) -> Raw:
    b = _b(s)
    assert len(b) < 1 << 8
    return Raw(b"\xd9" + struct.pack(">B", len(b)) + b)


def str16(s) -> Raw:
    b = _b(s)
    assert len(b) < 1 << 16
    return Raw(b"\xda" + struct.pack(">H", len(b)) + b)


def str32(s) -> Raw:
    b = _b(s)
    return Raw(b"\xdb" + struct.pack(">I", len(b)) + b)


def bin8(b) -> Raw:
    b = bytes(b)
    assert len(b) < 1 << 8
    return Raw(b"\xc4" + struct.pack(">B", len(b)) + b)


def bin16(b) -> Raw:
    b = bytes(b)
    assert len(b) < 1 << 16
    return Raw(b"\xc5" + struct.pack(">H", len(b)) + b)


def bin32(b) -> Raw:
    b = bytes(b)
    return Raw(b"\xc6" + struct.pack(">I", len(b)) + b)


def bin_auto(b) -> Raw:
    return Raw(pack(bytes(b)))


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 1 << 16:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def option(*pairs, **kv) -> Raw:
    """Build an option map keeping the given order; values may be :class:`Raw`.

    ``option(("chunk", str8("hello")), size=1)`` or ``option(chunk="abc")``.
    """
    items = list(pairs) + list(kv.items())
    return Raw(map_header(len(items)) + b"".join(pack(k) + enc(v) for k, v in items))


def raw_map(*pairs) -> Raw:
    """A map whose keys are packed normally and whose values may be :class:`Raw`."""
    return Raw(map_header(len(pairs)) + b"".join(enc(k) + enc(v) for k, v in pairs))


# --------------------------------------------------------------------------- time forms


def t_fixint(n: int) -> Raw:
    assert 0 <= n < 128
    return Raw(bytes([n]))


def t_uint16(n: int) -> Raw:
    return Raw(b"\xcd" + struct.pack(">H", n))


def t_uint32(n: int) -> Raw:
    return Raw(b"\xce" + struct.pack(">I", n))


def t_uint64(n: int) -> Raw:
    return Raw(b"\xcf" + struct.pack(">Q", n))


def t_int32(n: int) -> Raw:
    """The form Docker sends without sub-second precision."""
    return Raw(b"\xd2" + struct.pack(">i", n))


def t_int64(n: int) -> Raw:
    return Raw(b"\xd3" + struct.pack(">q", n))


def t_event(sec: int, nsec: int) -> Raw:
    """EventTime as fixext8 (``D7 00``)."""
    return Raw(b"\xd7\x00" + struct.pack(">II", sec, nsec))


def t_event_ext8(sec: int, nsec: int) -> Raw:
    """EventTime as ext8 (``C7 08 00``)."""
    return Raw(b"\xc7\x08\x00" + struct.pack(">II", sec, nsec))


def t_float64(f: float) -> Raw:
    return Raw(b"\xcb" + struct.pack(">d", f))


def t_with_meta(t: bytes, meta) -> Raw:
    """The v1.5 form ``[EventTime, {metadata}]``."""
    return Raw(b"\x92" + enc(t) + enc(meta))


# --------------------------------------------------------------------------- requests


def message(tag, t, record, opt=ABSENT) -> bytes:
    """Message mode ``[tag, time, record, option?]``; ``opt=None`` encodes a nil option."""
    parts = [enc(tag), enc(t), enc(record)]
    if opt is not ABSENT:
        parts.append(enc(opt))
    return array_header(len(parts)) + b"".join(parts)


def entry(t, record) -> bytes:
    return b"\x92" + enc(t) + enc(record)


def forward(tag, entries, opt=ABSENT) -> bytes:
    """Forward mode; ``entries`` is a list of ``(time, record)`` or of ready ``Raw`` entries."""
    body = array_header(len(entries)) + b"".join(
        bytes(e) if isinstance(e, Raw) else entry(*e) for e in entries
    )
    parts = [enc(tag), body]
    if opt is not ABSENT:
        parts.append(enc(opt))
    return array_header(len(parts)) + b"".join(parts)


def entry_stream(entries) -> bytes:
    return b"".join(entry(t, r) for t, r in entries)


def packed_forward(tag, stream: bytes, opt=ABSENT, container=bin_auto) -> bytes:
    """PackedForward / CompressedPackedForward with ``stream`` wrapped by ``container``."""
    parts = [enc(tag), bytes(container(stream))]
    if opt is not ABSENT:
        parts.append(enc(opt))
    return array_header(len(parts)) + b"".join(parts)


def gzip_members(*parts: bytes) -> bytes:
    """Concatenate one gzip member per part."""
    return b"".join(gzip.compress(p) for p in parts)


@functools.lru_cache(maxsize=1)
def gzip_bomb(total: int = 1 << 30, chunk: int = 1 << 20) -> bytes:
    """A gzip member that inflates to ``total`` zero bytes, built without holding them."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(chunk)
    out = []
    for _ in range(total // chunk):
        out.append(c.compress(zeros))
    out.append(c.flush())
    return b"".join(out)


def ack(chunk) -> bytes:
    """The exact ack bytes for a chunk (``Raw`` keeps the client's encoding form)."""
    return b"\x81\xa3ack" + enc(chunk)


# --------------------------------------------------------------------------- records / times


def rec(line=None, tenant=None, service=None, **extra) -> dict:
    r = {}
    if tenant is not None:
        r["TENANT_ID"] = tenant
    if service is not None:
        r["SERVICE_ID"] = service
    if line is not None:
        r["log"] = line
    r.update(extra)
    return r


def fmt_time(ns: int) -> str:
    """The json format's ``time`` string: UTC, always 9 fraction digits."""
    sec, frac = divmod(ns, 10**9)
    dt = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=sec)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % frac


def float_ns(f: float) -> int:
    """Nanoseconds exactly as derived from a float number of seconds."""
    sec = int(f)
    return sec * 10**9 + round((f - sec) * 1e9)


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def loads3(frames):
    """Decode frame 3 of a json-format message."""
    return json.loads(frames[2])


# --------------------------------------------------------------------------- clients


class Client:
    """A forward-protocol client connection (TCP or unix) with bounded reads."""

    def __init__(self, addr, timeout: float = 10.0):
        if isinstance(addr, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.addr = addr

    @property
    def local(self) -> str:
        """The client's own address as the gateway sees it: ``ip:port`` for TCP."""
        name = self.sock.getsockname()
        if isinstance(name, tuple):
            return "%s:%d" % (name[0], name[1])
        return name

    def send(self, data: bytes):
        self.sock.sendall(data)

    def send_tolerant(self, data: bytes) -> bool:
        """Send, ignoring a peer that closed the connection meanwhile. True if all sent."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return False

    def recv_exact(self, n: int, timeout: float = 10.0) -> bytes:
        """Read exactly ``n`` bytes; return fewer only on EOF or when ``timeout`` expires."""
        deadline = time.monotonic() + timeout
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        return buf

    def read_available(self, timeout: float) -> bytes:
        """Whatever arrives within ``timeout`` (b"" when nothing does)."""
        deadline = time.monotonic() + timeout
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return buf
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return buf
            if not chunk:
                return buf
            buf += chunk

    def wait_closed(self, timeout: float = 5.0):
        """Wait for EOF or reset from the gateway.

        Returns ``(closed, data_read_before_close)``.
        """
        deadline = time.monotonic() + timeout
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, buf
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False, buf
            except (ConnectionResetError, ConnectionAbortedError):
                return True, buf
            if not chunk:
                return True, buf
            buf += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
