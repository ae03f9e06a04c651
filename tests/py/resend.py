"""A lock-step acked client that behaves as Docker's fluentd driver and Fluent Bit do
when the gateway goes away: it sends one request, waits for its ack, and when the
connection breaks (or no ack comes) it reconnects and resends the same bytes with the
same chunk id. It records what was acked, so tests can check that every acked line
arrives."""

from __future__ import annotations

import socket
import threading
import time

import fwd
from fwd import ack, message, option

T0 = 1700000000


class ResendingClient(threading.Thread):
    def __init__(self, addr, name, tenant, ack_timeout=5.0, give_up=120.0, lines=None):
        super().__init__(daemon=True)
        self.addr, self.name, self.tenant = addr, name, tenant
        self.ack_timeout, self.give_up = ack_timeout, give_up
        self.limit = lines
        self.acked: list[str] = []
        self.resends = 0
        self.refusals = 0  # connections closed without the ack
        self.stop = threading.Event()
        self.error = None
        self._sock = None

    def line(self, i):
        return "%s %07d" % (self.name, i)

    def _connect(self, deadline):
        while not self.stop.is_set():
            try:
                s = socket.create_connection(self.addr, timeout=self.ack_timeout)
                s.settimeout(self.ack_timeout)
                return s
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return None

    def _send_until_acked(self, request, want):
        """True once acked; resends after reconnecting until then."""
        deadline = time.monotonic() + self.give_up
        first = True
        while not self.stop.is_set():
            if self._sock is None:
                self._sock = self._connect(deadline)
                if self._sock is None:
                    return False
            try:
                if not first:
                    self.resends += 1
                first = False
                self._sock.sendall(request)
                got = b""
                while len(got) < len(want):
                    part = self._sock.recv(len(want) - len(got))
                    if not part:
                        break
                    got += part
                if got == want:
                    return True
                self.refusals += 1
            except OSError:
                self.refusals += 1
            self._sock.close()
            self._sock = None
            if time.monotonic() > deadline:
                raise TimeoutError("%s: no ack within %.0fs" % (self.name, self.give_up))
            time.sleep(0.05)
        return False

    def run(self):
        i = 0
        try:
            while not self.stop.is_set() and (self.limit is None or i < self.limit):
                line = self.line(i)
                chunk = "%s-%d" % (self.name, i)
                request = message(self.name, T0, fwd.rec(line, tenant=self.tenant), option(chunk=chunk))
                if not self._send_until_acked(request, ack(chunk)):
                    break
                self.acked.append(line)
                i += 1
        except Exception as e:  # reported by the test
            self.error = repr(e)
        finally:
            if self._sock is not None:
                self._sock.close()

    def finish(self, timeout=60):
        self.stop.set()
        self.join(timeout)
        assert not self.is_alive(), "%s did not stop" % self.name
        assert self.error is None, self.error
