"""The `batch` output format: one ZeroMQ message per (tenant, service) of each request,
frames [tenant + topic_suffix, service, body], the body a Fluentd Forward-mode message
`[tag, [[time, record], ...]]` in msgpack with EventTime times and the records' bytes as
they came. Checked byte for byte and with the msgpack library, with hand-built requests
and a real client (Python's fluent-logger), and through `fwdgate tail`."""

import http.client
import struct
import time

import msgpack
import pytest
from fluent import sender

import fwd
from fwd import ack, forward, message, option, packed_forward

T0 = 1700000000
NS = 123456789
CID = "3f2a9c81b0d4" + "e" * 52
MAX_BODY = 1 << 20  # BATCH_MAX_BODY in src/publish/format.rs


@pytest.fixture
def bgw(start_gateway):
    return start_gateway("--format", "batch")


@pytest.fixture
def bsub(bgw, subscribe):
    return subscribe(bgw)


def event_time(sec, nsec=0) -> bytes:
    """EventTime as the gateway writes it: fixext8, ext type 0, u32 BE seconds and nanos."""
    return b"\xd7\x00" + struct.pack(">II", sec, nsec)


def str_head(n) -> bytes:
    if n < 32:
        return bytes([0xA0 | n])
    if n < 256:
        return b"\xd9" + bytes([n])
    if n < 65536:
        return b"\xda" + struct.pack(">H", n)
    return b"\xdb" + struct.pack(">I", n)


def body(tag: str, entries) -> bytes:
    """The expected body: ``entries`` are (EventTime bytes, record bytes as sent)."""
    t = tag.encode()
    return (b"\x92" + str_head(len(t)) + t + fwd.array_header(len(entries))
            + b"".join(b"\x92" + tm + rec for tm, rec in entries))


def decode(b: bytes):
    """The body as any msgpack consumer reads it (ext 0 kept as ExtType)."""
    return msgpack.unpackb(b, raw=False)


def ext_time(sec, nsec=0):
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))


def test_forward_request_two_tenants_exact_frames(bgw, bsub):
    records = [
        fwd.rec("a one", tenant="ta", service="sa", container_id=CID),
        fwd.rec("b one", tenant="tb"),
        fwd.rec("a two", tenant="ta", service="sa"),
        fwd.rec("nobody"),
        fwd.rec("b two", tenant="tb", extra={"nested": [1, None, True]}),
    ]
    times = [(T0 + i, NS + i) for i in range(len(records))]
    with bgw.connect() as c:
        c.send(forward("app.web", [(fwd.t_event(s, n), r) for (s, n), r in zip(times, records)],
                       option(chunk="c1")))
        assert c.recv_exact(len(ack("c1"))) == ack("c1")
        msgs = bsub.recv_n(3)
    entry = lambda i: (event_time(*times[i]), fwd.pack(records[i]))
    assert msgs == [
        [b"ta", b"sa", body("app.web", [entry(0), entry(2)])],
        [b"tb", b"default", body("app.web", [entry(1), entry(4)])],
        [b"default", b"default", body("app.web", [entry(3)])],
    ]
    assert decode(msgs[0][2]) == ["app.web", [[ext_time(*times[0]), records[0]],
                                              [ext_time(*times[2]), records[2]]]]
    assert decode(msgs[1][2]) == ["app.web", [[ext_time(*times[1]), records[1]],
                                              [ext_time(*times[4]), records[4]]]]
    assert bsub.sync(bgw) == []


def test_every_time_encoding_becomes_an_event_time(bgw, bsub):
    r = fwd.rec("times", tenant="tt")
    entries = [(fwd.t_fixint(100), r), (fwd.t_int32(T0), r), (fwd.t_uint64(T0), r),
               (fwd.t_event_ext8(T0, 5), r), (fwd.t_float64(1700000000.5), r),
               (fwd.t_with_meta(fwd.t_event(T0, 7), {"k": "v"}), r)]
    with bgw.connect() as c:
        c.send(forward("t", entries))
        [m] = bsub.recv_n(1)
    want = [event_time(100), event_time(T0), event_time(T0), event_time(T0, 5),
            event_time(T0, 500000000), event_time(T0, 7)]
    assert m == [b"tt", b"default", body("t", [(t, fwd.pack(r)) for t in want])]
    assert bsub.sync(bgw) == []


def test_packed_forward_keeps_record_bytes_verbatim(bgw, bsub):
    # A record map written as map16 with str8 keys (not the shortest form) stays so.
    raw_record = fwd.Raw(b"\xde\x00\x02" + fwd.str8("log") + fwd.str8("packed")
                         + fwd.str8("TENANT_ID") + fwd.str8("tp"))
    stream = b"".join(fwd.entry(fwd.t_event(T0, i), raw_record) for i in range(3))
    with bgw.connect() as c:
        c.send(packed_forward("pk", stream))
        [m] = bsub.recv_n(1)
    assert m == [b"tp", b"default",
                 body("pk", [(event_time(T0, i), bytes(raw_record)) for i in range(3)])]
    assert decode(m[2])[1][2][1] == {"log": "packed", "TENANT_ID": "tp"}
    assert bsub.sync(bgw) == []


def test_message_mode_request_is_one_message(bgw, bsub):
    r = fwd.rec("single", tenant="tm", service="sm")
    for i in range(3):
        with bgw.connect() as c:
            c.send(message("m", fwd.t_event(T0, i), r))
            [m] = bsub.recv_n(1)
        assert m == [b"tm", b"sm", body("m", [(event_time(T0, i), fwd.pack(r))])]
    assert bsub.sync(bgw) == []


def test_large_group_is_split_under_the_body_cap(bgw, bsub):
    # Three records of 400,000-byte lines: two fit in 1 MiB, the third starts a message.
    records = [fwd.rec(chr(ord("a") + i) * 400000, tenant="tbig") for i in range(3)]
    with bgw.connect() as c:
        c.send(forward("big", [(fwd.t_event(T0, i), r) for i, r in enumerate(records)],
                       option(chunk="big")))
        assert c.recv_exact(len(ack("big"))) == ack("big")
        msgs = bsub.recv_n(2)
    entry = lambda i: (event_time(T0, i), fwd.pack(records[i]))
    assert msgs == [
        [b"tbig", b"default", body("big", [entry(0), entry(1)])],
        [b"tbig", b"default", body("big", [entry(2)])],
    ]
    assert all(len(m[2]) <= MAX_BODY for m in msgs)
    assert bsub.sync(bgw) == []


def test_topic_suffix_and_exact_tenant_subscription(start_gateway, subscribe):
    gw = start_gateway("--format", "batch", "--topic-suffix", "|")
    sub = subscribe(gw, b"t1|")
    r1, r10 = fwd.rec("one", tenant="t1"), fwd.rec("ten", tenant="t10")
    with gw.connect() as c:
        c.send(forward("s", [(fwd.t_event(T0, 0), r1), (fwd.t_event(T0, 1), r10),
                             (fwd.t_event(T0, 2), r1)]))
        [m] = sub.recv_n(1)
    assert m == [b"t1|", b"default",
                 body("s", [(event_time(T0, 0), fwd.pack(r1)), (event_time(T0, 2), fwd.pack(r1))])]
    assert sub.sync(gw) == []


def test_source_keys_are_added_to_each_record(start_gateway, subscribe, tmp_path):
    cfg = tmp_path / "src.toml"
    cfg.write_text('[input]\nsource_address_key = "src"\n')
    gw = start_gateway("--format", "batch", "--config", str(cfg))
    sub = subscribe(gw)
    small = fwd.rec("small", tenant="ts")
    wide = {"TENANT_ID": "ts", **{"k%02d" % i: i for i in range(14)}}  # 15 pairs
    with gw.connect() as c:
        c.send(forward("src", [(fwd.t_event(T0, 0), small), (fwd.t_event(T0, 1), wide)]))
        [m] = sub.recv_n(1)
    src_pair = fwd.pack("src") + fwd.pack("127.0.0.1")
    packed_small, packed_wide = fwd.pack(small), fwd.pack(wide)
    # fixmap 2 -> fixmap 3; fixmap 15 -> map16 of 16, the added pair first.
    small_out = bytes([0x83]) + src_pair + packed_small[1:]
    wide_out = b"\xde\x00\x10" + src_pair + packed_wide[1:]
    assert m == [b"ts", b"default",
                 body("src", [(event_time(T0, 0), small_out), (event_time(T0, 1), wide_out)])]
    records = [e[1] for e in decode(m[2])[1]]
    assert records == [{"src": "127.0.0.1", **small}, {"src": "127.0.0.1", **wide}]
    assert list(records[1])[0] == "src"
    assert sub.sync(gw) == []


def test_fluent_logger_client(bgw, bsub):
    host, port = bgw.addr
    s = sender.FluentSender("app", host=host, port=port, nanosecond_precision=True)
    record = {"TENANT_ID": "tc", "SERVICE_ID": "sc", "log": "hello from fluent-logger",
              "nested": {"a": [1, 2, {"b": None}]}, "ratio": 0.5}
    try:
        got = []
        for i in range(3):
            r = {**record, "log": "fluent %d" % i}
            ns = (T0 + i) * 10**9 + NS
            assert s.emit_with_time("web", sender.EventTime.from_unix_nano(ns), r), s.last_error
            # One request at a time: each is one batch, so one message each.
            [m] = bsub.recv_n(1)
            got.append(m)
            assert m == [b"tc", b"sc", body("app.web", [(event_time(T0 + i, NS), fwd.pack(r))])]
            assert decode(m[2]) == ["app.web", [[ext_time(T0 + i, NS), r]]]
    finally:
        s.close()
    assert len(got) == 3
    assert bsub.sync(bgw) == []


def test_tail_prints_one_line_per_record(bgw, start_tail):
    tail = start_tail("--connect", bgw.zmq_bind[0], "--tenant", "tw")
    assert tail.wait_ready(bgw, "tw", "zzprobe-svc") == []
    records = [
        fwd.rec("first line", tenant="tw", container_id=CID),
        fwd.rec("other tenant", tenant="tx"),
        {"TENANT_ID": "tw", "message": "from message"},
        {"TENANT_ID": "tw", "n": 1},
    ]
    with bgw.connect() as c:
        c.send(forward("app", [(fwd.t_event(T0, i), r) for i, r in enumerate(records)]))
    want = [b"3f2a9c81b0d4: first line", b"app: from message", b'app: {"TENANT_ID":"tw","n":1}']
    got = [tail.line(10) for _ in want]
    assert got == want, tail.stderr_text()
    assert tail.wait_ready(bgw, "tw", "zzprobe-svc") == []


def test_tail_takes_suffix_and_line_keys_from_the_config(start_gateway, start_tail, tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[route]\nline_keys = ["msg"]\n[output]\nformat = "batch"\ntopic_suffix = "|"\n')
    gw = start_gateway("--config", str(cfg))
    tail = start_tail("--config", str(cfg), "--connect", gw.zmq_bind[0], "--tenant", "tw")
    assert tail.wait_ready(gw, "tw", "zzprobe-svc") == []
    records = [{"TENANT_ID": "tw1", "msg": "prefix only"},
               {"TENANT_ID": "tw", "log": "not the line", "msg": "the line"}]
    with gw.connect() as c:
        c.send(forward("app", [(fwd.t_event(T0, i), r) for i, r in enumerate(records)]))
    assert tail.line(10) == b"app: the line", tail.stderr_text()
    assert tail.wait_ready(gw, "tw", "zzprobe-svc") == []


def metrics_text(gw):
    host, _, port = gw.ready_fields["metrics"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def test_rate_limit_and_tenant_counts_stay_per_event(start_gateway, subscribe, tmp_path):
    cfg = tmp_path / "rate.toml"
    cfg.write_text('[limits]\ntenant_events_per_second = 100\ntenant_burst = 100\n'
                   '[metrics]\nlisten = "127.0.0.1:0"\n')
    gw = start_gateway("--format", "batch", "--config", str(cfg))
    sub = subscribe(gw, b"tnoisy", b"tquiet")
    # One request, the two tenants interleaved: the noisy one keeps its first 100 events.
    noisy = [fwd.rec("noisy %03d" % i, tenant="tnoisy") for i in range(300)]
    quiet = [fwd.rec("quiet %03d" % i, tenant="tquiet") for i in range(30)]
    entries = []
    for i in range(300):
        entries.append((fwd.t_event(T0, i), noisy[i]))
        if i % 10 == 0:
            entries.append((fwd.t_event(T0, 1000 + i // 10), quiet[i // 10]))
    with gw.connect() as c:
        c.send(forward("app", entries, option(chunk="r")))
        assert c.recv_exact(len(ack("r"))) == ack("r")
    msgs = sub.recv_n(2)
    assert sub.sync(gw) == [], "more than the rate got through"
    assert [m[0] for m in msgs] == [b"tnoisy", b"tquiet"]
    assert [[e[1]["log"] for e in decode(m[2])[1]] for m in msgs] == [
        ["noisy %03d" % i for i in range(100)], ["quiet %03d" % i for i in range(30)]]
    text = metrics_text(gw)
    assert 'fwdgate_tenant_events_rate_limited_total{tenant="tnoisy"} 200\n' in text, text
    assert 'fwdgate_events_dropped_total{reason="tenant_rate_limit"} 200\n' in text
    assert 'fwdgate_tenant_events_total{tenant="tnoisy"} 100\n' in text
    assert 'fwdgate_tenant_events_total{tenant="tquiet"} 30\n' in text


def test_held_without_subscriber_then_flushed_in_order(start_gateway, subscribe):
    gw = start_gateway("--format", "batch")
    sent = []
    with gw.connect() as c:
        for i in range(20):
            r = fwd.rec("held %02d" % i, tenant="thold")
            sent.append(r)
            c.send(forward("h", [(fwd.t_event(T0, i), r)], option(chunk="h%d" % i)))
            assert c.recv_exact(len(ack("h%d" % i))) == ack("h%d" % i)
    # The first subscriber gets what was held before any probe.
    sub = subscribe(gw, b"thold", ready=False)
    msgs = sub.recv_n(20, timeout=20)
    assert msgs == [[b"thold", b"default", body("h", [(event_time(T0, i), fwd.pack(r))])]
                    for i, r in enumerate(sent)]
    sub.wait_ready(gw)
    assert sub.sync(gw) == []


def published(gw) -> int:
    import re
    host, port = gw.ready_fields["metrics"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return int(re.search(r"^fwdgate_events_published_total (\d+)$", text, re.M).group(1))


@pytest.mark.parametrize("hwm_bytes,lossless", [(1 << 30, True), (1 << 20, False)],
                         ids=["1GiB-holds-all", "1MiB-one-message"])
def test_batch_hwm_bytes_bounds_what_waits_for_a_subscriber(start_gateway, tmp_path, hwm_bytes,
                                                            lossless):
    # slow_subscriber = "drop" makes the high-water mark visible: what does not fit for a
    # subscriber that is not reading is lost for it. 120 requests of 1000 events (batch
    # messages of ~450 KB, or ~900 KB for two requests read together) are published
    # while the subscriber reads nothing (its own queue and socket buffer are tiny):
    # 1 GiB of room keeps them all; 1 MiB means a mark of one message, and all but what
    # the kernel's buffers hold is dropped.
    import zmq
    from conftest import zmq_context
    conf = tmp_path / "gw.toml"
    conf.write_text('[output]\nformat = "batch"\nslow_subscriber = "drop"\n'
                    'batch_hwm_bytes = %d\n' % hwm_bytes)
    gw = start_gateway("--config", str(conf), "--metrics-listen", "127.0.0.1:0")
    sub = zmq_context().socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.RCVHWM, 1)
        sub.setsockopt(zmq.RCVBUF, 64 * 1024)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(gw.zmq_bind[0])
        stream = fwd.entry_stream((fwd.t_event(T0, i), fwd.rec("%04d " % i + "w" * 400, tenant="th"))
                                  for i in range(1000))
        request = packed_forward("app.hwm", stream)
        with gw.connect() as c:
            # Held until the subscription arrives, then published: the subscriber is up.
            c.send(request)
            assert sub.poll(10_000), "the first message never came"
            first = sub.recv_multipart()
            assert first[0] == b"th" and 400_000 < len(first[2]) < MAX_BODY
            for _ in range(120):
                c.send(request)
        deadline = time.monotonic() + 30
        while published(gw) < 121_000:
            assert time.monotonic() < deadline, "the gateway did not publish every event"
            time.sleep(0.05)
        # With room for all, read until all 120,000 events are in (bounded); else until
        # the stream has been quiet for 3 s, so everything that was kept has come.
        # Events, not messages: requests read together merge into one batch, and one
        # message then carries two of them (900 KB, still within 1 MiB).
        received = 0
        until = time.monotonic() + 60
        while time.monotonic() < until and not (lossless and received == 120_000):
            if not sub.poll(3_000):
                break
            frames = sub.recv_multipart()
            assert len(frames) == 3 and frames[0] == b"th"
            received += len(decode(frames[2])[1])
    finally:
        sub.close()
    if lossless:
        assert received == 120_000, "%d of 120,000 events arrived" % received
    else:
        assert received < 60_000, received
