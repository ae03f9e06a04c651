"""The binary as a Unix citizen: colour only on a terminal and never with NO_COLOR,
`fwdgate tail` stopping at once on SIGTERM and SIGINT (also as PID 1, where a signal
without a handler is ignored), help that lists only what applies, completions and the
man page from the command-line definitions, and a version naming the commit."""

import os
import pty
import re
import select
import signal
import subprocess
import time
import tomllib

import pytest

from conftest import FWDGATE_BIN, REPO_ROOT, clean_env, run_fwdgate

ESC = b"\x1b["
STOP_BOUND = 5.0


def read_until(fd, needle, timeout=20.0):
    """Bytes read from ``fd`` until they hold ``needle`` (or the bound, or EOF)."""
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side of the pty is closed
            break
        if not chunk:
            break
        out += chunk
    return out


def gateway_log_start(tmp_path, stderr, env=None):
    """A gateway in the text log format with its stderr on ``stderr``."""
    return subprocess.Popen([FWDGATE_BIN, "--listen", "127.0.0.1:0", "--zmq-bind", "tcp://127.0.0.1:*"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                            env=clean_env(env), cwd=tmp_path)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


@pytest.mark.parametrize("env, coloured", [({}, True), ({"NO_COLOR": "1"}, False)])
def test_log_colour_only_on_a_terminal(tmp_path, env, coloured):
    master, slave = pty.openpty()
    try:
        gw = gateway_log_start(tmp_path, slave, env)
        os.close(slave)
        seen = read_until(master, b"fwdgate ready")
        stop(gw)
    finally:
        os.close(master)
    assert b"fwdgate ready" in seen, seen
    assert (ESC in seen) == coloured, seen


def test_log_has_no_colour_in_a_file(tmp_path):
    log = tmp_path / "stderr.log"
    with open(log, "wb") as f:
        gw = gateway_log_start(tmp_path, f)
        deadline = time.monotonic() + 20
        while b"fwdgate ready" not in log.read_bytes():
            assert time.monotonic() < deadline and gw.poll() is None, log.read_bytes()
            time.sleep(0.05)
        stop(gw)
    text = log.read_bytes()
    assert ESC not in text, text
    assert b" INFO fwdgate" in text and b"fwdgate stopped" in text, text


# ------------------------------------------------------------------ fwdgate tail


def wait_exit(proc, bound=STOP_BOUND):
    start = time.monotonic()
    try:
        status = proc.wait(bound)
    except subprocess.TimeoutExpired:
        pytest.fail("tail still running %.0f s after the signal" % bound)
    return status, time.monotonic() - start


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_tail_stops_at_once_on_signal(gw, start_tail, sig):
    tail = start_tail("--connect", gw.zmq_bind[0], "--tenant", "t1")
    tail.wait_ready(gw, "t1", "s1")
    tail.proc.send_signal(sig)
    status, took = wait_exit(tail.proc)
    assert status == 0, tail.stderr_text()
    assert tail.stderr_text() == ""
    assert took < 2.0, took


def child_of(pid, timeout=10.0):
    """The one child process of ``pid`` (unshare --fork's child)."""
    path = "/proc/%d/task/%d/children" % (pid, pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = open(path).read().split()
        if kids:
            return int(kids[0])
        time.sleep(0.02)
    pytest.fail("unshare started no child within %.0f s" % timeout)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_tail_as_pid_1_stops_on_signal(gw, start_tail, sig):
    """As PID 1 of a PID namespace (as in a container), a signal with no handler does
    nothing: tail must handle SIGTERM and SIGINT itself."""
    if os.geteuid() != 0:
        pytest.fail("needs root for unshare --pid", pytrace=False)
    tail = start_tail("--connect", gw.zmq_bind[0], "--tenant", "t1", prefix=("unshare", "--pid", "--fork"))
    tail.wait_ready(gw, "t1", "s1")
    pid1 = child_of(tail.proc.pid)
    with open("/proc/%d/status" % pid1) as f:
        nspid = [l.split()[1:] for l in f if l.startswith("NSpid:")][0]
    assert nspid[-1] == "1", nspid
    os.kill(pid1, sig)
    status, took = wait_exit(tail.proc)
    assert status == 0, tail.stderr_text()
    assert took < 2.0, took


def test_tail_ends_quietly_when_its_reader_goes(gw):
    """`fwdgate tail | head -n 1`: tail ends once head has gone, without an error."""
    p = subprocess.Popen("'%s' tail --connect '%s' --tenant t1 | head -n 1" % (FWDGATE_BIN, gw.zmq_bind[0]),
                         shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                         stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    n = 0
    while p.poll() is None:
        assert time.monotonic() < deadline, "tail | head did not end"
        gw.send_probe("line-%d" % n, tenant="t1", service="s1")
        n += 1
        time.sleep(0.05)
    out, err = p.communicate()
    assert p.returncode == 0
    assert re.fullmatch(rb"probe: line-\d+\n", out), out
    assert err == b"", err


def long_options(help_text):
    return sorted(set(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", help_text, re.M)))


def test_tail_help_lists_only_its_options(tmp_path):
    p = run_fwdgate(["tail", "--help"], cwd=tmp_path)
    assert p.returncode == 0
    assert long_options(p.stdout.decode()) == sorted(
        ["--connect", "--tenant", "--service", "--config", "--topic-suffix", "--help"])


def test_gateway_options_follow_run_and_check_config(tmp_path):
    top = long_options(run_fwdgate(["--help"], cwd=tmp_path).stdout.decode())
    assert "--listen" in top and "--metrics-listen" in top and "--version" in top
    for cmd in ("run", "check-config"):
        sub = long_options(run_fwdgate([cmd, "--help"], cwd=tmp_path).stdout.decode())
        assert sub == sorted(set(top) - {"--version"}), (cmd, sub)


# ------------------------------------------------------------------ completions, man page, version


def test_bash_completion_loads_and_completes_commands(tmp_path):
    p = run_fwdgate(["completions", "bash"], cwd=tmp_path)
    assert p.returncode == 0
    script = tmp_path / "fwdgate.bash"
    script.write_bytes(p.stdout)
    # what bash offers after `fwdgate ` and after `fwdgate tail --`
    probe = r"""
source "$1"
COMP_WORDS=(fwdgate ""); COMP_CWORD=1; COMP_LINE="fwdgate "; COMP_POINT=${#COMP_LINE}
_fwdgate fwdgate "" fwdgate; echo "${COMPREPLY[*]}"
COMP_WORDS=(fwdgate tail --); COMP_CWORD=2; COMP_LINE="fwdgate tail --"; COMP_POINT=${#COMP_LINE}
_fwdgate fwdgate -- tail; echo "${COMPREPLY[*]}"
complete -p fwdgate
"""
    r = subprocess.run(["bash", "-c", probe, "probe", str(script)], capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    commands, tail_opts, registered = r.stdout.decode().splitlines()
    for word in ("run", "check-config", "tail", "proxy", "completions", "man", "--listen"):
        assert word in commands.split(), commands
    assert sorted(tail_opts.split()) == sorted(
        ["--connect", "--tenant", "--service", "--config", "--topic-suffix", "--help"]), tail_opts
    assert registered.startswith("complete ") and registered.endswith(" fwdgate"), registered


@pytest.mark.parametrize("shell, marker", [("zsh", b"#compdef fwdgate\n"), ("fish", b"\ncomplete -c fwdgate ")])
def test_zsh_and_fish_completions(tmp_path, shell, marker):
    p = run_fwdgate(["completions", shell], cwd=tmp_path)
    assert p.returncode == 0
    assert marker in p.stdout, p.stdout[:300]
    assert b"check-config" in p.stdout and b"topic-suffix" in p.stdout


def test_man_page_renders_without_warnings(tmp_path):
    p = run_fwdgate(["man"], cwd=tmp_path)
    assert p.returncode == 0
    assert p.stdout.startswith(b".ie \\n(.g .ds Aq \\(aq\n") or p.stdout.startswith(b".TH"), p.stdout[:200]
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww"], input=p.stdout, capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    text = re.sub(r".\x08", "", r.stdout.decode())
    for word in ("fwdgate", "--listen", "--metrics-listen", "FWDGATE_LISTEN", "check-config", "tail"):
        assert word in text, word


def test_man_pages_per_command(tmp_path):
    out = tmp_path / "man"
    p = run_fwdgate(["man", "--out-dir", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["fwdgate-check-config.1", "fwdgate-completions.1", "fwdgate-man.1",
                                       "fwdgate-proxy.1", "fwdgate-run.1", "fwdgate-tail.1", "fwdgate.1"]
    assert b"topic\\-suffix" in (out / "fwdgate-tail.1").read_bytes()
    proxy = (out / "fwdgate-proxy.1").read_bytes()
    assert b"xsub\\-bind" in proxy and b"FWDGATE_PROXY_XPUB_BIND" in proxy


def test_version_names_package_version_and_commit(tmp_path):
    cargo = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())
    p = run_fwdgate(["--version"], cwd=tmp_path)
    m = re.fullmatch(r"fwdgate (\S+) \(commit ([0-9a-f]{12})\)\n", p.stdout.decode())
    assert m, p.stdout
    assert m.group(1) == cargo["package"]["version"]
    # the commit exists in this checkout
    r = subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e", m.group(2) + "^{commit}"],
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
