"""The README's install and quick start commands, taken from README.md and run as
written, so that the two cannot drift apart.

Install: the first ``sh`` block under "## Install" (``cargo install --locked --path .``),
run with CARGO_TARGET_DIR set to this tree's target/ (so it reuses the release build of
the test command) and CARGO_INSTALL_ROOT set to a scratch directory (so nothing is
installed on the machine); its bin/ then leads PATH.

Quick start: the first ``sh`` block under "## Quick start", fed line by line to one bash
process in the repository's root, as a person would type it. The only pause is after the
first command, until the gateway logs ``fwdgate ready`` (a person waits for it too): the
fluentd driver dials the gateway when the container starts. The ``# tail prints: ...``
comment is the line expected on standard output, with any container id.
"""

import os
import re
import select
import signal
import socket
import subprocess
import time

import pytest

import peers
from conftest import REPO_ROOT, clean_env
from peers import fail

pytestmark = [pytest.mark.release, pytest.mark.usefixtures("dockerd")]

README = REPO_ROOT / "README.md"
PORTS = [(24224, socket.SOCK_STREAM), (24224, socket.SOCK_DGRAM), (6362, socket.SOCK_STREAM)]
READY_TIMEOUT = 20.0
LINE_TIMEOUT = 120.0  # the busybox image may be made first
STOP_TIMEOUT = 20.0


def sh_block(heading):
    """The commands of the first ```sh block after ``heading``, with continuation
    lines joined (comments kept as they are)."""
    text = README.read_text()
    at = text.index("\n" + heading + "\n")
    m = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M).search(text, at)
    assert m, "no sh block under %r in README.md" % heading
    commands = []
    for line in m.group(1).splitlines():
        if commands and commands[-1].endswith("\\"):
            commands[-1] += "\n" + line
        else:
            commands.append(line)
    return commands


def test_quick_start_block_is_as_expected():
    """The shape this test relies on: gateway first, then the rest, then a kill."""
    cmds = sh_block("## Quick start")
    assert cmds[0].startswith("fwdgate ") and cmds[0].endswith("&"), cmds[0]
    assert any(c.startswith("# tail prints: ") for c in cmds), cmds
    assert cmds[-1].startswith("kill "), cmds[-1]


class Shell:
    """bash reading commands from a pipe, in a session of its own (so whatever it starts
    can be stopped by its process group); stdout and stderr read as they come."""

    def __init__(self, env):
        self.proc = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=REPO_ROOT, env=env, start_new_session=True)
        self.out = {self.proc.stdout.fileno(): b"", self.proc.stderr.fileno(): b""}
        self.open = set(self.out)

    @property
    def stdout(self):
        return self.out[self.proc.stdout.fileno()]

    @property
    def stderr(self):
        return self.out[self.proc.stderr.fileno()]

    def type(self, command):
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def read_until(self, done, timeout):
        """Read both pipes until ``done()`` holds or both are closed; bounded."""
        deadline = time.monotonic() + timeout
        while not done() and self.open:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for fd in select.select(list(self.open), [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if chunk:
                    self.out[fd] += chunk
                else:
                    self.open.discard(fd)
        return done()

    def kill_all(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def transcript(self):
        return "stdout:\n%s\nstderr:\n%s" % (self.stdout.decode(errors="replace")[-3000:],
                                           self.stderr.decode(errors="replace")[-3000:])


def test_readme_install_and_quick_start(tmp_path, empty_dockerd):
    """From a Docker daemon with an empty image store, as on a fresh machine: the quick
    start makes local/busybox itself."""
    for port, kind in PORTS:
        why = peers.port_in_use(port, kind)
        if why:
            fail("the README's quick start uses the fixed port %d, which is taken (%s); free it and re-run"
                 % (port, why))
    root = tmp_path / "install-root"
    env = clean_env({"CARGO_TARGET_DIR": str(REPO_ROOT / "target"), "CARGO_INSTALL_ROOT": str(root)})
    for command in sh_block("## Install"):
        p = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, timeout=900)
        assert p.returncode == 0, "%s\n%s" % (command, p.stderr.decode(errors="replace"))
    assert os.access(root / "bin" / "fwdgate", os.X_OK)

    commands = sh_block("## Quick start")
    [expected] = [c[len("# tail prints: "):] for c in commands if c.startswith("# tail prints: ")]
    wanted = re.compile(("^" + re.escape(expected) + "$").replace(re.escape("3f2a9c81b0d4"), "[0-9a-f]{12}")
                        .encode(), re.M)
    shell = Shell(empty_dockerd.env(clean_env({"PATH": "%s:%s" % (root / "bin", os.environ["PATH"])})))
    try:
        shell.type(commands[0])
        if not shell.read_until(lambda: b"fwdgate ready" in shell.stderr, READY_TIMEOUT):
            fail("the quick start's gateway did not log `fwdgate ready` within %.0f s\n%s"
                 % (READY_TIMEOUT, shell.transcript()))
        for command in commands[1:-1]:
            shell.type(command)
        if not shell.read_until(lambda: wanted.search(shell.stdout), LINE_TIMEOUT):
            fail("tail did not print %r within %.0f s\n%s" % (expected, LINE_TIMEOUT, shell.transcript()))
        shell.type(commands[-1])
        shell.proc.stdin.close()
        # both pipes close once bash and every job it started have exited
        if not shell.read_until(lambda: False, STOP_TIMEOUT) and shell.open:
            fail("the quick start's processes still run %.0f s after `%s`\n%s"
                 % (STOP_TIMEOUT, commands[-1], shell.transcript()))
        assert shell.proc.wait(10) == 0, shell.transcript()
    finally:
        shell.kill_all()
    assert len(wanted.findall(shell.stdout)) == 1, shell.transcript()
    assert b"make-busybox-image: made local/busybox:latest" in shell.stdout, shell.transcript()
    # the gateway drained and stopped on kill's SIGTERM, and logged without colour codes
    assert b"fwdgate stopped" in shell.stderr, shell.transcript()
    assert b"\x1b[" not in shell.stderr, shell.transcript()
    assert b"error" not in shell.stderr.lower(), shell.transcript()


COMPOSE_TAIL_LINE = re.compile(rb"^tail_1\s+\| ([0-9a-f]{12}): demo-line-(\d+)\r?$", re.M)
# `docker-compose up` colours each service's prefix (unless --no-color), also into a pipe
ANSI_COLOUR = re.compile(rb"\x1b\[[0-9;]*m")


def tail_lines(out):
    return COMPOSE_TAIL_LINE.findall(ANSI_COLOUR.sub(b"", out))


def children(pid):
    """The pids of a process's children (our own shell's), from /proc."""
    out = []
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, task)) as f:
            out += [int(c) for c in f.read().split()]
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def test_readme_compose_demo_from_an_empty_image_store(empty_dockerd):
    """The README's "Docker Compose" block, typed line by line into one bash as written,
    against a daemon with nothing in it: the release build is staged, local/busybox made,
    `docker-compose up --build` builds the gateway image and shows tail printing the
    demo's lines in order; Ctrl-C (SIGINT to docker-compose) stops it, and `down --rmi
    local` leaves no container and no image but local/busybox."""
    commands = sh_block("## Docker Compose")
    assert [c.split("#")[0].split() for c in commands] == [
        "cargo build --release && scripts/stage-image.sh".split(),
        "scripts/make-busybox-image.sh".split(),
        "docker-compose up --build".split(),
        "docker-compose down --rmi local".split(),
    ], commands
    for port, kind in PORTS:
        why = peers.port_in_use(port, kind)
        if why:
            fail("docker-compose.yml uses the fixed port %d, which is taken (%s); free it and re-run" % (port, why))
    env = empty_dockerd.env(clean_env({"COMPOSE_INTERACTIVE_NO_CLI": "1"}))
    shell = Shell(env)
    try:
        for command in commands[:3]:
            shell.type(command)
        if not shell.read_until(lambda: len(tail_lines(shell.stdout)) >= 20, 300):
            fail("docker-compose up did not show 20 of tail's lines within 300 s\n%s" % shell.transcript())
        ups = [c for c in children(shell.proc.pid) if "docker-compose up" in cmdline(c)]
        assert len(ups) == 1, "docker-compose up among the shell's children: %r" % ups
        os.kill(ups[0], signal.SIGINT)
        shell.type(commands[3])
        shell.proc.stdin.close()
        if not shell.read_until(lambda: False, 120) and shell.open:
            fail("the compose demo still runs 120 s after Ctrl-C and `down`\n%s" % shell.transcript())
        assert shell.proc.wait(10) == 0, shell.transcript()
    finally:
        shell.kill_all()
        # whatever `down` did not remove goes with the daemon's data root
    lines = tail_lines(shell.stdout)
    ids = {cid for cid, _ in lines}
    assert len(ids) == 1, "tail printed lines of %r" % ids
    nums = [int(n) for _, n in lines]
    assert nums == list(range(nums[0], nums[0] + len(nums))), "not contiguous and in order: %r" % nums
    assert b"make-busybox-image: made local/busybox:latest" in shell.stdout, shell.transcript()
    docker = peers.docker_bin()
    left = subprocess.run([docker, "ps", "-aq"], env=env, capture_output=True, timeout=30).stdout.split()
    assert left == [], "containers left after down: %r" % left
    images = subprocess.run([docker, "images", "--format", "{{.Repository}}:{{.Tag}}"], env=env,
                            capture_output=True, timeout=30).stdout.decode().split()
    assert images == ["local/busybox:latest"], "images after `down --rmi local`: %r" % images
