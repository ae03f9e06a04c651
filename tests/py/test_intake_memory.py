"""The intake memory budget (``limits.intake_memory_bytes``): what hostile clients can
make the gateway hold is bounded by connections x 128 KiB + the budget, however many
slow senders declare large requests and however many decompression bombs arrive at
once, while well-behaved clients keep being served.

RSS is read from /proc/PID/status (VmRSS now, VmHWM the peak since start)."""

import socket
import struct
import threading
import time
import zlib

import pytest
import zstandard

import fwd
from fwd import ack, message, option, packed_forward
from test_metrics import get, metric, wait_for

T0 = 1700000000
KIB = 1024
MIB = 1 << 20
# The part of a connection's read buffer that is outside the budget.
READ_FLOOR = 128 * KIB


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (key, pid))


def rss(gw):
    return status_kb(gw.proc.pid, "VmRSS") * KIB


def peak(gw):
    return status_kb(gw.proc.pid, "VmHWM") * KIB


def config(tmp_path, budget, frame, decompressed):
    p = tmp_path / "intake.toml"
    p.write_text(
        "[input]\nmax_frame_size = %d\nmax_decompressed_size = %d\n"
        "[limits]\nintake_memory_bytes = %d\n"
        '[metrics]\nlisten = "127.0.0.1:0"\n'
        "[shutdown]\ntimeout_ms = 500\n" % (frame, decompressed, budget))
    return str(p)


def metrics(gw):
    return get(gw.ready_fields["metrics"], "/metrics")[1]


def packed_stream(lines, tenant):
    return b"".join(fwd.entry(T0, fwd.rec(line, tenant=tenant)) for line in lines)


def acked_lines(gw, sub, tenant, n, prefix):
    """Sends n lines, one acked request each, on one connection; all must be acked and
    arrive at the subscriber."""
    with gw.connect() as c:
        for i in range(n):
            chunk = "%s-%d" % (prefix, i)
            c.send(message("app", T0, fwd.rec("%s %d" % (prefix, i), tenant=tenant), option(chunk=chunk)))
            assert c.recv_exact(len(ack(chunk)), timeout=10) == ack(chunk), "line %d not acked" % i
    got = sub.recv_n(n, timeout=20)
    assert [m[0] for m in got] == [tenant.encode()] * n


def declare_large(gw, declared, send):
    """A connection that declares a PackedForward stream of `declared` bytes and sends the
    first `send` of them (as much as the socket takes without blocking)."""
    s = socket.create_connection(gw.tcp[0], timeout=5)
    head = b"\x92\xa4slow\xc6" + struct.pack(">I", declared)
    s.sendall(head)
    s.setblocking(False)
    return s, bytearray(send)


def push(socks, seconds):
    """Sends what each connection still has to send until all is sent or nothing moves
    for `seconds`."""
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < seconds:
        moved = False
        for s, rest in socks:
            if not rest:
                continue
            try:
                n = s.send(rest[:64 * KIB])
            except BlockingIOError:
                continue
            del rest[:n]
            moved = True
        if moved:
            quiet_since = time.monotonic()
        elif all(not rest for _, rest in socks):
            return
        else:
            time.sleep(0.01)


@pytest.fixture
def many_files():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slow_senders_of_large_requests_hold_no_more_than_the_budget(
        start_gateway, subscribe, tmp_path, many_files):
    budget = 12 * MIB
    conns = 500
    gw = start_gateway("--config", config(tmp_path, budget, 2 * MIB, MIB))
    sub = subscribe(gw, b"good")
    acked_lines(gw, sub, "good", 5, "warm")
    before = rss(gw)
    # Each declares 1 MiB and sends 400 KiB of it, then nothing more: without the
    # budget each would hold what it sent (200 MB in all); with it, each holds at most
    # its 128 KiB floor, and the budget is shared.
    slow = [declare_large(gw, MIB, 400 * KIB) for _ in range(conns)]
    push(slow, 2.0)
    # Every connection has read its floor, and some have waited for the budget.
    wait_for(lambda: metric(metrics(gw), "fwdgate_bytes_received_total") >= conns * 64 * KIB,
             "every slow connection to be read up to its floor", timeout=30)
    grown = max(rss(gw) for _ in range(5)) - before
    # Besides the buffers: each connection's task and socket state, and what the
    # allocator keeps of the buffers that grew and were freed.
    bound = conns * READ_FLOOR + budget + 40 * MIB
    print("RSS grew %.1f MB with %d slow senders (bound %.1f MB)" % (grown / MIB, conns, bound / MIB))
    assert grown < bound, "RSS grew %.1f MB with %d slow senders; bound %.1f MB" % (
        grown / MIB, conns, bound / MIB)
    wait_for(lambda: metric(metrics(gw), "fwdgate_intake_memory_waits_total") > 0,
             "a connection to wait for the budget", timeout=10)
    text = metrics(gw)
    held = metric(text, "fwdgate_intake_memory_bytes")
    assert metric(text, "fwdgate_intake_memory_limit_bytes") == budget
    assert budget - 2 * MIB <= held <= budget, "budget held: %d" % held

    # Small requests need no budget: a well-behaved client is served meanwhile.
    acked_lines(gw, sub, "good", 50, "during")
    # A large request waits for room, and gets it once the slow senders are gone.
    lines = ["big %d %s" % (i, "x" * 900) for i in range(1500)]
    big = packed_forward("app", packed_stream(lines, "good"), option(chunk="big"))
    assert len(big) > 1.2 * MIB
    with gw.connect() as c:
        c.send(big)
        assert c.recv_exact(len(ack("big")), timeout=1.0) == b"", "acked while the budget was full"
        for s, _ in slow:
            # Reset, not closed: a close would leave what they have not sent queued
            # behind the gateway's full window, and their FIN behind it.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        got_ack = c.recv_exact(len(ack("big")), timeout=20)
        assert got_ack == ack("big"), "the large request was not acked once the slow senders left; metrics:\n%s" % "\n".join(
            l for l in metrics(gw).splitlines() if "intake" in l or "connections" in l or "bytes_received" in l)
    got = sub.recv_n(len(lines), timeout=20)
    assert len(got) == len(lines)
    wait_for(lambda: metric(metrics(gw), "fwdgate_intake_memory_bytes") == 0,
             "the budget to be given back", timeout=10)


def gzip_bomb(size):
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    return b"".join([c.compress(zeros) for _ in range(size // MIB)] + [c.flush()])


def zstd_bomb(size):
    c = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = bytes(MIB)
    return b"".join([c.compress(zeros) for _ in range(size // MIB)] + [c.flush()])


def test_decompression_bombs_at_once_cost_one_budget(start_gateway, subscribe, tmp_path):
    budget = 32 * MIB
    cap = 16 * MIB
    # As many threads as bombs, so that nothing but the budget keeps them from all
    # inflating at once (20 x 16 MiB and zstd's windows without it). One malloc arena:
    # glibc's arena per thread would keep each thread's freed output apart, which
    # measures the allocator (BENCHMARKS.md compares them), not the budget.
    gw = start_gateway("--config", config(tmp_path, budget, MIB, cap),
                       env={"TOKIO_WORKER_THREADS": "20", "MALLOC_ARENA_MAX": "1"})
    sub = subscribe(gw, b"good")
    acked_lines(gw, sub, "good", 5, "warm")
    before = rss(gw)
    bombs = []
    bodies = {"gzip": gzip_bomb(64 * MIB), "zstd": zstd_bomb(64 * MIB)}
    for i in range(20):
        codec = "gzip" if i % 2 else "zstd"
        body = bodies[codec]
        bombs.append(packed_forward("bomb", body, option(compressed=codec, chunk="b%d" % i),
                                    container=fwd.bin32))
    # A real compressed request beside them, that must be acked and delivered.
    lines = ["zipped %d" % i for i in range(1000)]
    good = packed_forward("app", fwd.gzip_members(packed_stream(lines, "good")),
                          option(compressed="gzip", chunk="good"), container=fwd.bin32)
    clients = [gw.connect() for _ in bombs]
    go = threading.Barrier(len(clients) + 1)
    outcomes = [None] * len(clients)

    def send(i):
        go.wait(10)
        clients[i].send(bombs[i])
        outcomes[i] = clients[i].wait_closed(60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    go.wait(10)
    with gw.connect() as c:
        c.send(good)
        assert c.recv_exact(len(ack("good")), timeout=60) == ack("good")
    for t in threads:
        t.join(90)
    for i, (closed, data) in enumerate(outcomes):
        assert closed and data == b"", "bomb %d: connection not closed without an ack" % i
    for cl in clients:
        cl.close()
    got = sub.recv_n(len(lines), timeout=20)
    assert [m[0] for m in got] == [b"good"] * len(lines)
    high = peak(gw) - before
    print("peak RSS %.1f MB above the start with 20 bombs (budget %d MB)" % (high / MIB, budget // MIB))
    # The floor: 20 connections with their decoders and threads, and what the
    # allocator keeps of output freed (bombs that restart with more room free what they
    # had). Here: budget + 13 to 36 MB; without the budget, 150-230 MB.
    assert high < budget + 48 * MIB, "peak RSS %.1f MB above the start with 20 bombs; budget %d MB" % (
        high / MIB, budget // MIB)
    warned = gw.log_lines(lambda raw, obj: "exceed the cap" in raw)
    assert len(warned) == 20, "expected one warning per bomb, got %d" % len(warned)
    wait_for(lambda: metric(metrics(gw), "fwdgate_intake_memory_bytes") == 0,
             "the budget to be given back", timeout=10)
