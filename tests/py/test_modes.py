"""Every forward-protocol mode and time encoding, checked through the json output format."""

import json
import time
import zlib

import pytest

import fwd
from fwd import (ABSENT, Raw, ack, bin8, bin16, bin32, entry_stream, forward, message, option,
                 packed_forward, str8, str16, str32)

T0 = 1700000000
NS = 123456789
T0_NS = T0 * 10**9


def expect_json(frames, *, tag, time_ns, record, peer, tenant=b"default", service=b"default"):
    assert len(frames) == 3, frames
    assert frames[0] == tenant
    assert frames[1] == service
    obj = json.loads(frames[2])
    assert obj == {
        "tag": tag,
        "time": fwd.fmt_time(time_ns),
        "time_ns": time_ns,
        "peer": peer,
        "record": record,
    }
    return obj


def three_records():
    return [
        fwd.rec("first", tenant="ta", service="sa"),
        fwd.rec("second", tenant="ta", service="sb", extra="x"),
        fwd.rec("third"),
    ]


def routing(r):
    return r.get("TENANT_ID", "default").encode(), r.get("SERVICE_ID", "default").encode()


def expect_records(msgs, records, times_ns, tag, peer):
    assert len(msgs) == len(records)
    for m, r, t in zip(msgs, records, times_ns):
        tenant, service = routing(r)
        expect_json(m, tag=tag, time_ns=t, record=r, peer=peer, tenant=tenant, service=service)


# ------------------------------------------------------------------ time encodings

TIME_CASES = [
    ("positive_fixint", fwd.t_fixint(100), 100 * 10**9),
    ("uint16", fwd.t_uint16(60000), 60000 * 10**9),
    ("uint32", fwd.t_uint32(T0), T0_NS),
    ("uint64", fwd.t_uint64(T0), T0_NS),
    ("int32_docker", fwd.t_int32(T0), T0_NS),
    ("int64", fwd.t_int64(T0), T0_NS),
    ("eventtime_fixext8", fwd.t_event(T0, NS), T0_NS + NS),
    ("eventtime_ext8", fwd.t_event_ext8(T0, NS), T0_NS + NS),
    ("float64", fwd.t_float64(1700000000.5), fwd.float_ns(1700000000.5)),
    ("eventtime_with_metadata", fwd.t_with_meta(fwd.t_event(T0, NS), {"otel": {"trace_id": "ab"}}), T0_NS + NS),
    ("eventtime_ext8_with_empty_metadata", fwd.t_with_meta(fwd.t_event_ext8(T0, 999999999), {}), T0_NS + 999999999),
]


@pytest.mark.parametrize("name,t,expected_ns", TIME_CASES, ids=[c[0] for c in TIME_CASES])
def test_time_encodings_message_mode(jgw, jsub, name, t, expected_ns):
    r = fwd.rec("time " + name, tenant="tt", service="ss")
    with jgw.connect() as c:
        c.send(message("tag.time", t, r))
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag.time", time_ns=expected_ns, record=r, peer=c.local, tenant=b"tt", service=b"ss")
    assert jsub.sync(jgw) == []


@pytest.mark.parametrize("name,t,expected_ns", TIME_CASES, ids=[c[0] for c in TIME_CASES])
def test_time_encodings_forward_mode(jgw, jsub, name, t, expected_ns):
    r = fwd.rec("fwd time " + name)
    with jgw.connect() as c:
        c.send(forward("tag.fwdtime", [(t, r), (fwd.t_event(T0, 1), r)]))
        m1, m2 = jsub.recv_n(2)
        expect_json(m1, tag="tag.fwdtime", time_ns=expected_ns, record=r, peer=c.local)
        expect_json(m2, tag="tag.fwdtime", time_ns=T0_NS + 1, record=r, peer=c.local)
    assert jsub.sync(jgw) == []


def test_time_string_format(jgw, jsub):
    # the README's example time string (its example time_ns does not match that string)
    ns = 1795648671 * 10**9 + 123456789
    r = fwd.rec("readme time")
    with jgw.connect() as c:
        c.send(message("t", fwd.t_event(1795648671, 123456789), r))
        [m] = jsub.recv_n(1)
    obj = json.loads(m[2])
    assert obj["time"] == "2026-11-25T23:17:51.123456789Z"
    assert obj["time_ns"] == ns
    # whole seconds still print 9 fraction digits
    with jgw.connect() as c:
        c.send(message("t", T0, r))
        [m] = jsub.recv_n(1)
    assert json.loads(m[2])["time"] == "2023-11-14T22:13:20.000000000Z"


@pytest.mark.parametrize("t", [Raw(b"\xc0"), fwd.t_fixint(0)], ids=["nil", "zero"])
def test_nil_or_zero_time_is_receipt_time(jgw, jsub, t):
    r = fwd.rec("receipt time")
    before = time.time_ns()
    with jgw.connect() as c:
        c.send(message("tag.now", t, r))
        [m] = jsub.recv_n(1)
    after = time.time_ns()
    obj = json.loads(m[2])
    assert before <= obj["time_ns"] <= after, (before, obj["time_ns"], after)
    assert obj["time"] == fwd.fmt_time(obj["time_ns"])
    assert obj["record"] == r


# ------------------------------------------------------------------ Message mode


def test_message_option_absent_empty_nil(jgw, jsub):
    records = [fwd.rec("opt absent"), fwd.rec("opt empty"), fwd.rec("opt nil")]
    with jgw.connect() as c:
        c.send(
            message("tag.m", T0, records[0])
            + message("tag.m", T0, records[1], {})
            + message("tag.m", T0, records[2], None)
        )
        msgs = jsub.recv_n(3)
        expect_records(msgs, records, [T0_NS] * 3, "tag.m", c.local)
        # none of these asked for an ack
        assert c.read_available(0.3) == b""
    assert jsub.sync(jgw) == []


def test_message_option_absent_byte_exact(jgw, jsub):
    # fixarray(3) fixstr "t" uint32 T0 {"log": "x"}
    data = b"\x93\xa1t\xce" + T0.to_bytes(4, "big") + b"\x81\xa3log\xa1x"
    with jgw.connect() as c:
        c.send(data)
        [m] = jsub.recv_n(1)
        expect_json(m, tag="t", time_ns=T0_NS, record={"log": "x"}, peer=c.local)


def test_unknown_option_keys_ignored(jgw, jsub):
    r = fwd.rec("unknown opts", tenant="tu")
    opt = option(("size", 1), ("x-unknown", [1, {"a": None}]), ("metadata", {"k": "v"}),
                 ("fluent_signal", 0), ("chunk", "u1"), ("zz", True))
    with jgw.connect() as c:
        c.send(message("tag.u", T0, r, opt))
        assert c.recv_exact(len(ack("u1"))) == ack("u1")
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag.u", time_ns=T0_NS, record=r, peer=c.local, tenant=b"tu")


def test_record_value_types(jgw, jsub):
    r = {
        "log": "types",
        "int": -5,
        "big": 2**64 - 1,
        "float": 1.5,
        "t": True,
        "f": False,
        "nil": None,
        "arr": [1, "two", [3], {"four": 4}],
        "map": {"nested": {"deeper": {"k": "v"}}, "n": 1},
        "empty_map": {},
        "empty_arr": [],
        "unicode": "h\u00e9llo \u2603 \U0001f600",
        "quote": 'a "quoted" \\ back\nslash\ttab',
    }
    with jgw.connect() as c:
        c.send(message("tag.types", T0, r))
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag.types", time_ns=T0_NS, record=r, peer=c.local)


def test_non_utf8_values_get_bytes_base64(jgw, jsub):
    bad_log = b"ab\xffcd\xe2\x82"  # a stray 0xFF and a truncated 3-byte sequence
    bad_other = b"\xc3\x28x"
    record = fwd.raw_map(("log", str8(bad_log)), ("ok", "fine"), ("other", str8(bad_other)))
    with jgw.connect() as c:
        c.send(message("tag.bytes", T0, record))
        [m] = jsub.recv_n(1)
    obj = json.loads(m[2])
    assert obj["record"] == {
        "log": bad_log.decode("utf-8", "replace"),
        "ok": "fine",
        "other": bad_other.decode("utf-8", "replace"),
    }
    assert "\ufffd" in obj["record"]["log"]
    assert obj["bytes_base64"] == {"log": fwd.b64(bad_log), "other": fwd.b64(bad_other)}
    assert set(obj) == {"tag", "time", "time_ns", "peer", "record", "bytes_base64"}


def test_peer_is_client_address(jgw, jsub):
    with jgw.connect() as a, jgw.connect() as b:
        a.send(message("p", T0, fwd.rec("from a")))
        [ma] = jsub.recv_n(1)
        b.send(message("p", T0, fwd.rec("from b")))
        [mb] = jsub.recv_n(1)
        assert json.loads(ma[2])["peer"] == a.local
        assert json.loads(mb[2])["peer"] == b.local
        assert a.local != b.local


def test_request_split_byte_by_byte(jgw, jsub):
    r = fwd.rec("dribbled", tenant="td")
    data = message("tag.split", fwd.t_event(T0, NS), r, option(chunk="split1"))
    with jgw.connect() as c:
        for i in range(len(data)):
            c.send(data[i:i + 1])
        assert c.recv_exact(len(ack("split1"))) == ack("split1")
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag.split", time_ns=T0_NS + NS, record=r, peer=c.local, tenant=b"td")


def test_many_requests_in_one_write(jgw, jsub):
    records = [fwd.rec("batch %d" % i) for i in range(50)]
    with jgw.connect() as c:
        c.send(b"".join(message("tag.b", T0 + i, r) for i, r in enumerate(records)))
        msgs = jsub.recv_n(50)
        expect_records(msgs, records, [(T0 + i) * 10**9 for i in range(50)], "tag.b", c.local)


def test_large_record_one_mib(jgw, jsub):
    line = "L" * (1 << 20)
    r = fwd.rec(line, tenant="big")
    with jgw.connect() as c:
        c.send(message("tag.large", T0, r, option(chunk="large")))
        assert c.recv_exact(len(ack("large")), timeout=20) == ack("large")
        [m] = jsub.recv_n(1, timeout=20)
        expect_json(m, tag="tag.large", time_ns=T0_NS, record=r, peer=c.local, tenant=b"big")


# ------------------------------------------------------------------ Forward mode


@pytest.mark.parametrize("opt", [ABSENT, {}, None, {"size": 3}], ids=["absent", "empty", "nil", "size"])
def test_forward_mode(jgw, jsub, opt):
    records = three_records()
    times = [fwd.t_int32(T0), fwd.t_event(T0, NS), fwd.t_float64(1700000000.5)]
    with jgw.connect() as c:
        c.send(forward("tag.fwd", list(zip(times, records)), opt))
        msgs = jsub.recv_n(3)
        expect_records(msgs, records, [T0_NS, T0_NS + NS, 1700000000500000000], "tag.fwd", c.local)
        assert c.read_available(0.2) == b""
    assert jsub.sync(jgw) == []


def test_forward_mode_empty_entries_with_chunk(jgw, jsub):
    with jgw.connect() as c:
        c.send(forward("tag.empty", [], option(chunk="empty")))
        assert c.recv_exact(len(ack("empty"))) == ack("empty")
    assert jsub.sync(jgw) == []


# ------------------------------------------------------------------ PackedForward

CONTAINERS = [("bin8", bin8), ("bin16", bin16), ("bin32", bin32),
              ("str8", str8), ("str16", str16), ("str32", str32)]


@pytest.mark.parametrize("name,container", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_packed_forward_containers(jgw, jsub, name, container):
    records = three_records()
    times = [fwd.t_event(T0, 1), fwd.t_event(T0, 2), fwd.t_event_ext8(T0, 3)]
    stream = entry_stream(zip(times, records))
    with jgw.connect() as c:
        c.send(packed_forward("tag.packed", stream, container=container))
        msgs = jsub.recv_n(3)
        expect_records(msgs, records, [T0_NS + 1, T0_NS + 2, T0_NS + 3], "tag.packed", c.local)
    assert jsub.sync(jgw) == []


def test_packed_forward_str32_byte_exact(jgw, jsub):
    # what Fluentd's out_forward sends: entries as str32 (0xdb + 4-byte length)
    stream = fwd.entry(fwd.t_event(T0, 5), {"log": "fluentd"})
    data = b"\x93\xa3tag" + b"\xdb" + len(stream).to_bytes(4, "big") + stream + b"\x81\xa4size\x01"
    with jgw.connect() as c:
        c.send(data)
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag", time_ns=T0_NS + 5, record={"log": "fluentd"}, peer=c.local)


def test_packed_forward_many_entries(jgw, jsub):
    records = [fwd.rec("packed %04d" % i, tenant="tp") for i in range(1000)]
    stream = entry_stream((fwd.t_event(T0, i), r) for i, r in enumerate(records))
    with jgw.connect() as c:
        c.send(packed_forward("tag.many", stream, option(size=1000, chunk="many"), container=bin32))
        assert c.recv_exact(len(ack("many")), timeout=20) == ack("many")
        msgs = jsub.recv_n(1000, timeout=30)
        expect_records(msgs, records, [T0_NS + i for i in range(1000)], "tag.many", c.local)


@pytest.mark.parametrize("piece", [None, 99_999, 4_097], ids=["one-write", "100k-pieces", "4k-pieces"])
def test_large_packed_requests_back_to_back(jgw, jsub, piece):
    # Two PackedForward requests of ~200 KB and a small Message request in one stream:
    # the reader sizes its reads to a declared stream, so the bytes after each large
    # request arrive in a read of their own or as a tail carried into the next buffer.
    batches = [[fwd.rec("big %d %05d " % (b, i) + "x" * 150, tenant="t%d" % b) for i in range(1000)]
               for b in range(2)]
    data = b""
    for b, records in enumerate(batches):
        stream = entry_stream((fwd.t_event(T0, i), r) for i, r in enumerate(records))
        assert len(stream) > 128 * 1024
        data += packed_forward("tag.big", stream, option(size=1000, chunk="big%d" % b), container=bin32)
    tail = fwd.rec("after", tenant="t9")
    data += message("tag.big", T0, tail, option(chunk="small"))
    with jgw.connect() as c:
        if piece is None:
            c.send(data)
        else:
            for at in range(0, len(data), piece):
                c.send(data[at:at + piece])
        want = ack("big0") + ack("big1") + ack("small")
        assert c.recv_exact(len(want), timeout=20) == want
        msgs = jsub.recv_n(2001, timeout=30)
        expect_records(msgs, batches[0] + batches[1] + [tail],
                       [T0_NS + i for i in range(1000)] * 2 + [T0_NS], "tag.big", c.local)
    assert jsub.sync(jgw) == []


# ------------------------------------------------------------------ CompressedPackedForward


def _compressed_case(jgw, jsub, payload, compressed, records, times_ns, container=bin32, tag="tag.gz"):
    with jgw.connect() as c:
        c.send(packed_forward(tag, payload, option(size=len(records), compressed=compressed), container=container))
        msgs = jsub.recv_n(len(records))
        expect_records(msgs, records, times_ns, tag, c.local)
    assert jsub.sync(jgw) == []


def _gz_records(n=4):
    records = [fwd.rec("gz %d" % i, tenant="tg", service="s%d" % i) for i in range(n)]
    times = [fwd.t_event(T0, i) for i in range(n)]
    return records, times, [T0_NS + i for i in range(n)]


@pytest.mark.parametrize("container", [bin32, bin8, str32], ids=["bin32", "bin8", "str32"])
def test_compressed_gzip_single_member(jgw, jsub, container):
    records, times, ns = _gz_records()
    payload = fwd.gzip_members(entry_stream(zip(times, records)))
    _compressed_case(jgw, jsub, payload, "gzip", records, ns, container=container)


def test_compressed_gzip_members_at_entry_boundaries(jgw, jsub):
    records, times, ns = _gz_records(4)
    parts = [fwd.entry(t, r) for t, r in zip(times, records)]
    payload = fwd.gzip_members(parts[0], parts[1] + parts[2], parts[3])
    _compressed_case(jgw, jsub, payload, "gzip", records, ns)


def test_compressed_gzip_members_split_mid_entry(jgw, jsub):
    records, times, ns = _gz_records(3)
    stream = entry_stream(zip(times, records))
    cut1, cut2 = len(stream) // 3, 2 * len(stream) // 3 + 1
    payload = fwd.gzip_members(stream[:cut1], stream[cut1:cut2], stream[cut2:])
    _compressed_case(jgw, jsub, payload, "gzip", records, ns)


def test_compressed_gzip_with_ack(jgw, jsub):
    records, times, ns = _gz_records(2)
    payload = fwd.gzip_members(entry_stream(zip(times, records)))
    with jgw.connect() as c:
        c.send(packed_forward("tag.gz", payload, option(size=2, compressed="gzip", chunk="gzack"), container=bin32))
        assert c.recv_exact(len(ack("gzack"))) == ack("gzack")
        msgs = jsub.recv_n(2)
        expect_records(msgs, records, ns, "tag.gz", c.local)


@pytest.mark.parametrize("content_size", [True, False], ids=["with_content_size", "streamed"])
def test_compressed_zstd(jgw, jsub, content_size):
    zstandard = pytest.importorskip("zstandard", reason="python zstandard package not installable")
    records, times, ns = _gz_records(4)
    stream = entry_stream(zip(times, records))
    if content_size:
        payload = zstandard.ZstdCompressor().compress(stream)
    else:
        cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
        payload = cobj.compress(stream) + cobj.flush()
    _compressed_case(jgw, jsub, payload, "zstd", records, ns, tag="tag.zstd")


def test_compressed_text_is_uncompressed(jgw, jsub):
    records, times, ns = _gz_records(3)
    _compressed_case(jgw, jsub, entry_stream(zip(times, records)), "text", records, ns, tag="tag.text")


# ------------------------------------------------------------------ signals, heartbeats, JSON


@pytest.mark.parametrize("signal", [1, 2])
def test_fluent_signal_metrics_traces_acked_not_published(jgw, jsub, signal):
    with jgw.connect() as c:
        # Message mode
        c.send(message("tag.sig", T0, fwd.rec("signal msg"), option(fluent_signal=signal, chunk="sig-m")))
        assert c.recv_exact(len(ack("sig-m"))) == ack("sig-m")
        # PackedForward with an opaque binary payload, as Fluent Bit sends cmetrics/ctraces
        blob = fwd.pack({"meta": {"cmetrics": {}}, "metrics": [1, 2, 3]}) + b"\x00\x01\x02"
        c.send(packed_forward("tag.sig", blob, option(fluent_signal=signal, size=1, chunk="sig-p"), container=bin8))
        assert c.recv_exact(len(ack("sig-p"))) == ack("sig-p")
        # the connection is still usable for logs
        r = fwd.rec("after signal")
        c.send(message("tag.sig", T0, r, option(chunk="sig-after")))
        assert c.recv_exact(len(ack("sig-after"))) == ack("sig-after")
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag.sig", time_ns=T0_NS, record=r, peer=c.local)
    assert jsub.sync(jgw) == []


def test_fluent_signal_zero_is_logs(jgw, jsub):
    r = fwd.rec("signal zero")
    with jgw.connect() as c:
        c.send(message("tag.sig0", T0, r, option(fluent_signal=0)))
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag.sig0", time_ns=T0_NS, record=r, peer=c.local)


def test_nil_heartbeat_between_requests(jgw, jsub):
    r1, r2 = fwd.rec("before heartbeat"), fwd.rec("after heartbeat")
    with jgw.connect() as c:
        c.send(b"\xc0")
        c.send(message("tag.hb", T0, r1))
        c.send(b"\xc0\xc0")
        c.send(message("tag.hb", T0, r2, option(chunk="hb")))
        assert c.recv_exact(len(ack("hb"))) == ack("hb")
        msgs = jsub.recv_n(2)
        expect_records(msgs, [r1, r2], [T0_NS, T0_NS], "tag.hb", c.local)
        # only heartbeats now: still connected, nothing published, nothing answered
        c.send(b"\xc0")
        assert c.read_available(0.3) == b""
        c.send(message("tag.hb", T0, r1, option(chunk="hb2")))
        assert c.recv_exact(len(ack("hb2"))) == ack("hb2")
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag.hb", time_ns=T0_NS, record=r1, peer=c.local)
    assert jsub.sync(jgw) == []


def test_json_connection(jgw, jsub):
    with jgw.connect() as c:
        c.send(b'["tag.a", 1700000000, {"log":"hi","TENANT_ID":"tj"}]')
        c.send(b'\n["tag.b", 1700000001, {"log":"second","TENANT_ID":"tj","SERVICE_ID":"sj","n":[1,{"x":null}]}]')
        m1, m2 = jsub.recv_n(2)
        expect_json(m1, tag="tag.a", time_ns=T0_NS, record={"log": "hi", "TENANT_ID": "tj"},
                    peer=c.local, tenant=b"tj")
        expect_json(m2, tag="tag.b", time_ns=T0_NS + 10**9,
                    record={"log": "second", "TENANT_ID": "tj", "SERVICE_ID": "sj", "n": [1, {"x": None}]},
                    peer=c.local, tenant=b"tj", service=b"sj")
    assert jsub.sync(jgw) == []


def test_json_connection_seed_format(gw, sub):
    with gw.connect() as c:
        c.send(b'["tag.a", 1700000000, {"log":"hi","TENANT_ID":"tj"}]')
        c.send(b'["tag.a", 1700000000, {"log":"again","TENANT_ID":"tj"}]')
        assert sub.recv_n(2) == [[b"tj", b"default", b"tag.a: hi"], [b"tj", b"default", b"tag.a: again"]]


def test_json_connection_ack_is_json(gw, sub):
    # Fluentd's in_forward answers a JSON connection in JSON.
    with gw.connect() as c:
        c.send(b'["tag.a", 1700000000, {"log":"json ack"}, {"chunk":"abc"}]')
        want = b'{"ack":"abc"}'
        assert c.recv_exact(len(want)) == want
    assert sub.recv_n(1) == [[b"default", b"default", b"tag.a: json ack"]]


def test_deep_but_allowed_nesting(jgw, jsub):
    inner = "bottom"
    for _ in range(100):
        inner = [inner]
    r = {"log": "deep", "deep": inner}
    with jgw.connect() as c:
        c.send(message("tag.deep", T0, r, option(chunk="deep")))
        assert c.recv_exact(len(ack("deep"))) == ack("deep")
        [m] = jsub.recv_n(1)
        expect_json(m, tag="tag.deep", time_ns=T0_NS, record=r, peer=c.local)


def test_eight_mib_line_seed(gw, sub):
    line = "x" * (8 << 20)
    with gw.connect() as c:
        c.send(message("big", T0, fwd.rec(line), option(chunk="big8")))
        assert c.recv_exact(len(ack("big8")), timeout=30) == ack("big8")
        [m] = sub.recv_n(1, timeout=30)
    assert m[:2] == [b"default", b"default"]
    assert m[2] == b"big: " + line.encode()
