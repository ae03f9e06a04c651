#!/usr/bin/env python3
"""What ordering a client's requests across its connections costs when the client has
many connections under one tag (containers logging with a daemon-wide tag, a
forwarder's connection pool), for one or more gateway binaries, side by side.

  backlog  N connections from 127.0.0.1, one tag, each sending one line while nobody is
           subscribed (a connection not accepted within 30 s ends the sending); then a
           subscriber: seconds from its arrival to the last line (or to 10 s without
           one), and lines out of the order they were sent
  idle     K idle connections of the tag (each sent one acked line), then one
           connection sending lock-step acked requests of that tag for --seconds, to
           a gateway in --format null (ingest only): requests/s and the gateway's CPU
           per request (utime + stime from /proc)

Each binary is started fresh for each measurement, the binaries taking turns, --rounds
times. The client is Python: the lock-step rate is bounded by it; the CPU per request
is the gateway's. All traffic stays on 127.0.0.1.

  python3 bench/client_order.py BIN [BIN...] [--backlog 10000] [--idle 0,100,1000]
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import time

import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "py"))
import fwd  # noqa: E402
from fwd import ack, option  # noqa: E402

T0 = 1700000000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, binary, extra=()):
        self.port, self.zport = free_port(), free_port()
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:%d" % self.port,
             "--zmq-bind", "tcp://127.0.0.1:%d" % self.zport, "--log-level", "warn", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("%s did not listen" % binary)
                time.sleep(0.02)

    def cpu(self):
        fields = open("/proc/%d/stat" % self.proc.pid).read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def recv_exact(s, n, timeout=30):
    s.settimeout(timeout)
    got = b""
    while len(got) < n:
        part = s.recv(n - len(got))
        if not part:
            raise RuntimeError("connection closed")
        got += part
    return got


def backlog(binary, n):
    gw = Gateway(binary)
    conns = []
    try:
        sent = 0
        try:
            for k in range(n):
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
                conns.append(s)
                s.sendall(fwd.message("docker", T0, fwd.rec("backlog %06d" % k, tenant="t")))
                sent += 1
        except OSError:
            pass   # a gateway that stops accepting: reported as fewer sent
        n = sent
        time.sleep(2)   # let the gateway read them all
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        t = time.monotonic()
        sub.connect("tcp://127.0.0.1:%d" % gw.zport)
        lines, last = [], t
        while len(lines) < n and time.monotonic() - last < 10:
            if sub.poll(200):
                lines.append(int(sub.recv_multipart()[2].rsplit(b" ", 1)[1]))
                last = time.monotonic()
        sub.close(0)
        breaks = sum(1 for a, b in zip(lines, lines[1:]) if b < a)
        return dict(sent=sent, received=len(lines), seconds=round(last - t, 2), order_breaks=breaks)
    finally:
        for s in conns:
            s.close()
        gw.stop()


def idle(binary, k, seconds):
    # Ingest only: what is measured is reading, ordering and acking, not publishing.
    gw = Gateway(binary, ["--format", "null"])
    held = []
    try:
        for i in range(k):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=60)
            s.sendall(fwd.message("docker", T0, fwd.rec("idle %d" % i, tenant="t"), option(chunk="i%d" % i)))
            held.append(s)
        for i, s in enumerate(held):
            recv_exact(s, len(ack("i%d" % i)))
        c = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Chunk ids of one length, each used once (a chunk id seen again is a resend).
        cpu0, t, n = gw.cpu(), time.monotonic(), 0
        while time.monotonic() - t < seconds:
            chunk = "c%09d" % n
            c.sendall(fwd.message("docker", T0, fwd.rec("x %d" % n, tenant="t"), option(chunk=chunk)))
            recv_exact(c, len(ack(chunk)))
            n += 1
        took, cpu = time.monotonic() - t, gw.cpu() - cpu0
        c.close()
        return dict(requests=n, per_s=n / took, cpu_us_per_request=cpu / n * 1e6)
    finally:
        for s in held:
            s.close()
        gw.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--backlog", type=int, default=10000)
    ap.add_argument("--idle", default="0,100,1000")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    need = max(args.backlog, max(int(x) for x in args.idle.split(","))) + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
    for r in range(args.rounds):
        for b in args.binaries:
            if args.backlog:
                print("round %d %s backlog %d: %s" % (r + 1, b, args.backlog, backlog(b, args.backlog)), flush=True)
        for k in (int(x) for x in args.idle.split(",")):
            for b in args.binaries:
                res = idle(b, k, args.seconds)
                print("round %d %s idle %d: %.0f requests/s, %.0f us CPU per request"
                      % (r + 1, b, k, res["per_s"], res["cpu_us_per_request"]), flush=True)


if __name__ == "__main__":
    main()
