"""A collector as its own process, so that tests can stop it (SIGSTOP), kill it and
start it again: a libzmq SUB socket that binds or connects, subscribes to the given
prefixes, and writes one line to stdout per message received: the tenant frame, a
tab, and the message's line (the body of the `seed` format after its ": ").

    python3 collector.py (--bind EP | --connect EP) --subscribe PREFIX [...]

It prints "ready ENDPOINT" first (the endpoint as bound) and runs until SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys

import zmq


def main():
    ap = argparse.ArgumentParser()
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--bind")
    where.add_argument("--connect")
    ap.add_argument("--subscribe", action="append", default=[])
    args = ap.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for p in args.subscribe:
        sock.setsockopt(zmq.SUBSCRIBE, p.encode())
    if args.bind:
        sock.bind(args.bind)
        endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    else:
        sock.connect(args.connect)
        endpoint = args.connect
    out = sys.stdout
    out.write("ready %s\n" % endpoint)
    out.flush()
    while not stop:
        if not sock.poll(50):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            line = frames[-1].split(b": ", 1)[-1]
            out.write("%s\t%s\n" % (frames[0].decode(errors="replace"), line.decode(errors="replace")))
        out.flush()
    sock.close(0)


if __name__ == "__main__":
    main()
