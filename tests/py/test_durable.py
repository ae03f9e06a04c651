"""The durable buffer, faults for real: a spool on a full disk, SIGKILL loops under acked
load with clients that resend, half a gigabyte held while no collector is there, and
the spool's own bound. Every acked line must arrive; duplicates after a crash stay
within what was published since the last checkpoint."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import threading
import time

import msgpack
import pytest
import zmq

import fwd
import peers
from fwd import ack, option
from resend import ResendingClient
from test_buffering import rss_kb
from test_metrics import get, metric, wait_for

T0 = 1700000000


class Collector(threading.Thread):
    """A SUB socket bound on an ephemeral endpoint (the gateway connects to it), read
    continuously; records when each line arrived."""

    def __init__(self, prefix=b"", batch=False, endpoint="tcp://127.0.0.1:*"):
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.subscribe(prefix)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.batch = batch
        self.got: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.start()

    def run(self):
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            now = time.monotonic()
            if self.batch:
                _, entries = msgpack.unpackb(frames[2], raw=False, strict_map_key=False)
                lines = [(frames[1].decode(), rec["log"]) for _, rec in entries]
            else:
                lines = [frames[2].split(b": ", 1)[1].decode()]
            with self.lock:
                self.got.extend((now, x) for x in lines)

    def lines(self):
        with self.lock:
            return [x for _, x in self.got]

    def count(self):
        with self.lock:
            return len(self.got)

    def wait_for_all(self, want, timeout=60):
        want = set(want)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if want <= set(self.lines()):
                return []
            time.sleep(0.1)
        return sorted(want - set(self.lines()))

    def close(self):
        self.stop.set()
        self.join(5)
        self.sock.close(0)


def absent_endpoint():
    """A ZeroMQ endpoint nobody listens on (a collector that is away)."""
    return "tcp://127.0.0.1:%d" % peers.free_port()


def write_config(tmp_path, text, name="gw.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def sigkill(gw):
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    gw._reader.join(10)


# ------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards (the test command runs as root)."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (the test command runs as root)", pytrace=False)
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_refuses_then_resumes_and_loses_nothing_acked(start_gateway, tmp_path, small_disk):
    """Acked sending into a full disk (ENOSPC): the requests that cannot be written are
    refused (not acked, counted, their connection closed) and resent by the clients;
    once space is freed, sending goes on; then SIGKILL and a restart with the
    collector back: every acked line arrives."""
    spool = small_disk / "spool"
    port = peers.free_port()
    config = write_config(tmp_path, '[spool]\ndir = "%s"\nmax_bytes = 0\nsegment_bytes = 65536\n'
                          '[metrics]\nlisten = "127.0.0.1:0"\n' % spool)
    gw = start_gateway("--config", config, "--listen", "127.0.0.1:%d" % port,
                       "--zmq-connect", absent_endpoint(), listen=False, zmq_bind=False)
    metrics = gw.ready_fields["metrics"]
    # Leave the spool about 300 KB of the 2 MiB.
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * (free - 300 * 1024))
    clients = [ResendingClient(("127.0.0.1", port), "disk%d" % k, "tdisk", ack_timeout=2) for k in range(3)]
    for c in clients:
        c.start()
    # Into ENOSPC: refusals are counted while the clients keep resending.
    wait_for(lambda: metric(get(metrics, "/metrics")[1], "fwdgate_requests_refused_total") >= 10,
             "requests refused on a full disk", timeout=60)
    # (A small record may still fit the last page of a segment now and then, and a
    # write that succeeds clears the state until the next one fails.)
    wait_for(lambda: get(metrics, "/readyz") == (503, "not ready: spool writes fail\n"),
             "readyz to say the spool's writes fail", timeout=10)
    assert gw.wait_log(lambda raw, obj: "spool write failed" in raw, timeout=5) is not None
    acked_while_full = sum(len(c.acked) for c in clients)
    os.unlink(filler)
    # Space is back: the resent requests are acked and sending goes on.
    wait_for(lambda: sum(len(c.acked) for c in clients) >= acked_while_full + 600,
             "600 more acks after the space was freed", timeout=60)
    assert get(metrics, "/readyz")[0] == 200
    refused = metric(get(metrics, "/metrics")[1], "fwdgate_requests_refused_total")
    errors = metric(get(metrics, "/metrics")[1], "fwdgate_spool_write_errors_total")
    sigkill(gw)
    for c in clients:
        c.finish()
    acked = [line for c in clients for line in c.acked]
    collector = Collector(b"tdisk")
    try:
        start_gateway("--config", config, "--listen", "127.0.0.1:%d" % port,
                      "--zmq-connect", collector.endpoint, listen=False, zmq_bind=False)
        missing = collector.wait_for_all(acked)
        got = collector.lines()
    finally:
        collector.close()
    assert missing == [], "%d acked lines lost after a full disk, e.g. %r" % (len(missing), missing[:3])
    assert refused >= 10 and errors >= 1
    print("full disk: %d acked, %d refused (%d write errors), %d resends; %d received, %d duplicates"
          % (len(acked), refused, errors, sum(c.resends for c in clients), len(got), len(got) - len(set(got))))


# ------------------------------------------------------------------ SIGKILL loop


def test_sigkill_loop_loses_nothing_and_duplicates_stay_within_a_checkpoint(start_gateway, tmp_path):
    """Six rounds of SIGKILL under lock-step acked load from clients that resend after
    reconnecting. Every acked line arrives, and what a restart publishes again is at
    most what was published in the last checkpoint interval and grace before the kill
    (plus the one request each client had in flight)."""
    interval_s, grace_s, slack_s = 0.5, 1.0, 0.5
    config = write_config(tmp_path, '[spool]\ndir = "%s"\ncheckpoint_interval_ms = %d\n'
                          % (tmp_path / "spool", interval_s * 1000))
    port = peers.free_port()
    collector = Collector(b"tkill")
    clients = [ResendingClient(("127.0.0.1", port), "kill%d" % k, "tkill") for k in range(4)]
    args = ("--config", config, "--listen", "127.0.0.1:%d" % port, "--zmq-connect", collector.endpoint)
    kills = []
    restarts = []
    try:
        gw = start_gateway(*args, listen=False, zmq_bind=False)
        for c in clients:
            c.start()
        for _ in range(6):
            started = time.monotonic()
            before = sum(len(c.acked) for c in clients)
            wait_for(lambda: sum(len(c.acked) for c in clients) >= before + 2000,
                     "2000 more acks", timeout=60)
            # Rounds of 4 s or more: a restart that published again more than the last
            # checkpoint's worth (a whole segment, or everything since the start) would
            # break the bound below.
            time.sleep(max(0.0, started + 4 - time.monotonic()))
            kills.append(time.monotonic())
            sigkill(gw)
            restarts.append(time.monotonic())
            gw = start_gateway(*args, listen=False, zmq_bind=False)
        before = sum(len(c.acked) for c in clients)
        wait_for(lambda: sum(len(c.acked) for c in clients) >= before + 500, "acks after the last restart")
        for c in clients:
            c.finish()
        acked = [line for c in clients for line in c.acked]
        missing = collector.wait_for_all(acked)
        assert missing == [], "%d acked lines lost across SIGKILL, e.g. %r" % (len(missing), missing[:3])
        gw.stop()
        with collector.lock:
            got = list(collector.got)
    finally:
        collector.close()
        for c in clients:
            c.stop.set()
    # Which receipts repeat an earlier one, by the restart they followed.
    first_seen = {}
    dups = [0] * len(kills)
    for at, line in got:
        if line not in first_seen:
            first_seen[line] = at
            continue
        k = max(i for i, r in enumerate(restarts) if r <= at) if any(r <= at for r in restarts) else None
        assert k is not None, "a duplicate before any restart: %r" % line
        dups[k] += 1
    window = interval_s + grace_s + slack_s
    for k, kill in enumerate(kills):
        published = sum(1 for at in first_seen.values() if kill - window <= at <= kill)
        bound = published + len(clients)
        print("kill %d: %d duplicates after the restart; %d lines published in the %.1fs before it"
              % (k + 1, dups[k], published, window))
        assert dups[k] <= bound, "restart %d published %d again, more than the %d of the last %.1fs" % (
            k + 1, dups[k], bound, window)
    print("SIGKILL loop: %d acked, %d received, %d duplicates in all" % (len(acked), len(got), sum(dups)))


# ------------------------------------------------------------------ half a gigabyte held


def packed_request(client, start, n, pad):
    entries = [(T0, {"log": "%s %08d %s" % (client, i, pad), "TENANT_ID": "tbig", "SERVICE_ID": client})
               for i in range(start, start + n)]
    stream = fwd.entry_stream(entries)
    return fwd.packed_forward(client, stream, option(chunk="%s-%d" % (client, start)))


def test_half_a_gigabyte_held_then_sigkill_then_replayed_in_order(start_gateway, tmp_path):
    """No collector while 512 MB are acked into the spool: the gateway's memory stays
    bounded. SIGKILL, restart: it listens within 2 s, and every line arrives, in order
    per client."""
    spool = tmp_path / "spool"
    config = write_config(tmp_path, '[spool]\ndir = "%s"\n[output]\nqueue_bytes = 16777216\nformat = "batch"\n'
                          % spool)
    gw = start_gateway("--config", config, "--zmq-connect", absent_endpoint(), zmq_bind=False)
    per, pad = 1000, "p" * 220
    total = 512 << 20
    clients = ["big0", "big1"]
    sent = {c: 0 for c in clients}
    peak = [rss_kb(gw.proc.pid)]
    errors = []
    written = [0]

    def sender(client):
        try:
            with gw.connect(timeout=60) as c:
                while written[0] < total:
                    req = packed_request(client, sent[client], per, pad)
                    chunk = "%s-%d" % (client, sent[client])
                    c.send(req)
                    if c.recv_exact(len(ack(chunk)), timeout=60) != ack(chunk):
                        errors.append("no ack for %s" % chunk)
                        return
                    sent[client] += per
                    written[0] += len(req)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=sender, args=(c,)) for c in clients]
    t = time.monotonic()
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        peak[0] = max(peak[0], rss_kb(gw.proc.pid))
        time.sleep(0.2)
    took = time.monotonic() - t
    assert errors == []
    on_disk = sum(os.path.getsize(p) for p in glob.glob(str(spool / "*.seg")))
    assert on_disk >= total, on_disk
    print("held: %d MB acked into the spool in %.1fs; gateway peak RSS %.0f MB"
          % (written[0] >> 20, took, peak[0] / 1024))
    assert peak[0] < 200 * 1024, "gateway RSS peaked at %d MB while holding" % (peak[0] // 1024)
    sigkill(gw)
    collector = Collector(b"tbig", batch=True)
    try:
        t = time.monotonic()
        gw2 = start_gateway("--config", config, "--zmq-connect", collector.endpoint, zmq_bind=False)
        listening = time.monotonic() - t
        with gw2.connect() as c:  # it accepts at once, while the spool is read back
            c.send(fwd.message("x", T0, fwd.rec("new", tenant="tnew"), option(chunk="new")))
            assert c.recv_exact(len(ack("new")), timeout=10) == ack("new")
        peak2 = [rss_kb(gw2.proc.pid)]
        want = sum(sent.values())
        deadline = time.monotonic() + 180
        while collector.count() < want and time.monotonic() < deadline:
            peak2[0] = max(peak2[0], rss_kb(gw2.proc.pid))
            time.sleep(0.2)
        replay_took = time.monotonic() - t
        got = collector.lines()
    finally:
        collector.close()
    assert listening < 2.0, "listening %.2fs after the start with %d MB in the spool" % (listening, on_disk >> 20)
    assert len(got) == want, "%d of %d lines arrived" % (len(got), want)
    for client in clients:
        lines = [line for svc, line in got if svc == client]
        assert lines == ["%s %08d %s" % (client, i, pad) for i in range(sent[client])], client
    print("restart: listening after %.2fs; %d lines replayed in %.1fs; peak RSS while replaying %.0f MB"
          % (listening, want, replay_took, peak2[0] / 1024))
    assert peak2[0] < 200 * 1024, "gateway RSS peaked at %d MB while replaying" % (peak2[0] // 1024)


# ------------------------------------------------------------------ Docker


def test_docker_request_ack_while_the_collector_is_away(start_gateway, tmp_path, containers, busybox_image):
    """A container logs with fluentd-request-ack (lock-step: the driver waits for each
    line's ack) while the collector is away, far longer than the memory queue can hold:
    every line is acked from the spool, the container ends, and once the collector is
    back every line arrives, in order."""
    endpoint = absent_endpoint()
    config = write_config(tmp_path, '[spool]\ndir = "%s"\nfsync = "interval"\n'
                          '[output]\nqueue_bytes = 65536\n[metrics]\nlisten = "127.0.0.1:0"\n'
                          % (tmp_path / "spool"))
    gw = start_gateway("--config", config, "--zmq-connect", endpoint, zmq_bind=False)
    n = 3000
    cid = containers.run("--network", "none", "--log-driver=fluentd",
                         "--log-opt", "fluentd-address=127.0.0.1:%d" % gw.addr[1],
                         "--log-opt", "fluentd-request-ack=true", "--log-opt", "env=TENANT_ID",
                         "-e", "TENANT_ID=tdocker", cmd=["seq", "1", str(n)])
    assert containers.wait(cid, timeout=120) == 0, "the container did not get its acks"
    text = get(gw.ready_fields["metrics"], "/metrics")[1]
    # Far more was acked than memory holds: the rest waits in the spool.
    assert metric(text, "fwdgate_queue_bytes") <= 65536
    assert metric(text, "fwdgate_spool_bytes") > 4 * 65536
    collector = Collector(b"tdocker", endpoint=endpoint)
    try:
        want = ["%d" % i for i in range(1, n + 1)]
        missing = collector.wait_for_all(want, timeout=60)
        got = collector.lines()
    finally:
        collector.close()
    assert missing == []
    assert got == want


# ------------------------------------------------------------------ damage


def test_a_damaged_record_costs_only_itself(start_gateway, tmp_path):
    """A flipped byte in the middle of a segment: the damaged record is skipped, counted
    and logged with its file and offset; the records after it still arrive."""
    spool = tmp_path / "spool"
    config = write_config(tmp_path, '[spool]\ndir = "%s"\n' % spool)
    gw = start_gateway("--config", config, "--zmq-connect", absent_endpoint(), zmq_bind=False)
    lines = ["damage %03d" % i for i in range(100)]
    with gw.connect() as c:
        for i, line in enumerate(lines):
            c.send(fwd.message("app", T0, fwd.rec(line, tenant="tdmg"), option(chunk="d%d" % i)))
            assert c.recv_exact(len(ack("d%d" % i)), timeout=10) == ack("d%d" % i)
    sigkill(gw)
    (segment,) = [p for p in glob.glob(str(spool / "*.seg")) if os.path.getsize(p) > 0]
    data = bytearray(open(segment, "rb").read())
    # The 50th record: find it by its line.
    at = data.index(b"damage 050")
    data[at + 3] ^= 0x01
    open(segment, "wb").write(bytes(data))
    collector = Collector(b"tdmg")
    try:
        gw2 = start_gateway("--config", config, "--metrics-listen", "127.0.0.1:0",
                            "--zmq-connect", collector.endpoint, zmq_bind=False)
        want = [x for x in lines if x != "damage 050"]
        missing = collector.wait_for_all(want, timeout=30)
        assert missing == []
        warned = gw2.wait_log(lambda raw, obj: "spool segment damaged" in raw, timeout=5)
        assert warned is not None and os.path.basename(segment) in warned, warned
        text = get(gw2.ready_fields["metrics"], "/metrics")[1]
        assert metric(text, "fwdgate_spool_damaged_regions_total") == 1
        assert metric(text, "fwdgate_spool_bytes_skipped_total") > 0
        got = collector.lines()
    finally:
        collector.close()
    assert got == want


# ------------------------------------------------------------------ the spool's bound


def test_spool_full_blocks_then_delivers_everything(start_gateway, tmp_path):
    """`spool.max_bytes` reached with the collector away: under `when_full = "block"` the
    client is held back (no ack) and /readyz says why; once the collector is back, all
    of it is delivered and the held-back request is acked."""
    config = write_config(tmp_path, '[spool]\ndir = "%s"\nmax_bytes = 262144\n'
                          '[output]\nqueue_bytes = 65536\n[metrics]\nlisten = "127.0.0.1:0"\n'
                          % (tmp_path / "spool"))
    endpoint = absent_endpoint()
    gw = start_gateway("--config", config, "--zmq-connect", endpoint, zmq_bind=False)
    metrics = gw.ready_fields["metrics"]
    client = ResendingClient(gw.addr, "full", "tfull", ack_timeout=60)
    client.start()
    collector = None
    try:
        wait_for(lambda: get(metrics, "/readyz")[0] == 503, "readyz to say the spool is full", timeout=60)
        assert get(metrics, "/readyz")[1] == "not ready: spool full (spool.max_bytes)\n"
        held = len(client.acked)
        time.sleep(0.5)  # the client stays held back: no ack comes meanwhile
        assert len(client.acked) == held
        on_disk = sum(os.path.getsize(p) for p in glob.glob(str(tmp_path / "spool" / "*.seg")))
        assert on_disk <= 262144, on_disk
        # The collector comes back where the gateway looks for it.
        collector = Collector(b"tfull", endpoint=endpoint)
        wait_for(lambda: len(client.acked) >= held + 200, "acks once the collector is back", timeout=60)
        client.finish()
        # (While the client sends, the spool may fill again: a published request stays
        # on disk a second or two, until the checkpoint. Once it stops, room comes back.)
        wait_for(lambda: get(metrics, "/readyz")[0] == 200, "room in the spool again", timeout=30)
        missing = collector.wait_for_all(client.acked)
        got = collector.lines()
    finally:
        client.stop.set()
        if collector is not None:
            collector.close()
    assert missing == []
    assert got[:len(client.acked)] == client.acked, "out of order"
    print("spool full: %d lines held in %d bytes before the client was held back" % (held, on_disk))


def test_spool_full_drop_newest_counts_what_it_drops(start_gateway, tmp_path):
    config = write_config(tmp_path, '[spool]\ndir = "%s"\nmax_bytes = 131072\n'
                          '[output]\nqueue_bytes = 65536\nwhen_full = "drop_newest"\n'
                          '[metrics]\nlisten = "127.0.0.1:0"\n' % (tmp_path / "spool"))
    endpoint = absent_endpoint()
    gw = start_gateway("--config", config, "--zmq-connect", endpoint, zmq_bind=False)
    n = 3000
    with gw.connect() as c:
        for i in range(n):
            c.send(fwd.message("app", T0, fwd.rec("drop %04d" % i, tenant="tdrop"), option(chunk="x%d" % i)))
            assert c.recv_exact(len(ack("x%d" % i)), timeout=10) == ack("x%d" % i)
    text = get(gw.ready_fields["metrics"], "/metrics")[1]
    dropped = int(re.search(r'^fwdgate_events_dropped_total\{reason="spool_full"\} (\d+)$', text, re.M).group(1))
    assert dropped > 0
    kept = ["drop %04d" % i for i in range(n - dropped)]
    collector = Collector(b"tdrop", endpoint=endpoint)
    try:
        missing = collector.wait_for_all(kept, timeout=30)
        assert missing == []
        # Once published, the spool's room comes back (after the checkpoint); nothing
        # more than what was kept is published: a line sent now arrives after all of it.
        wait_for(lambda: get(gw.ready_fields["metrics"], "/readyz")[0] == 200, "room in the spool", timeout=30)
        with gw.connect() as c:
            c.send(fwd.message("app", T0, fwd.rec("after", tenant="tdrop"), option(chunk="after")))
            assert c.recv_exact(len(ack("after")), timeout=10) == ack("after")
        assert collector.wait_for_all(["after"], timeout=30) == []
        got = collector.lines()
    finally:
        collector.close()
    assert got == kept + ["after"], "kept the first %d, dropped the newest %d" % (n - dropped, dropped)
