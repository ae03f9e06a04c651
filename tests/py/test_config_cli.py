"""Configuration: check-config, flag > environment > file > default precedence, bad
configurations and a taken port."""

import json
import socket
import time
import tomllib

import pytest

import fwd
from conftest import run_fwdgate
from fwd import message

T0 = 1700000000


def check_config(*args, env=None, cwd=None):
    p = run_fwdgate(["check-config", *args], env=env, cwd=cwd)
    assert p.returncode == 0, "exit %r, stderr:\n%s" % (p.returncode, p.stderr.decode(errors="replace"))
    out = p.stdout.decode()
    return out, tomllib.loads(out)


def test_check_config_flags(tmp_path):
    out, cfg = check_config("--listen", "127.0.0.1:9999", "--format", "json", cwd=tmp_path)
    assert "127.0.0.1:9999" in out
    assert 'format = "json"' in out
    assert cfg["input"]["listen"] == ["127.0.0.1:9999"]
    assert cfg["output"]["format"] == "json"


def test_check_config_env(tmp_path):
    out, cfg = check_config("--listen", "127.0.0.1:9999", env={"FWDGATE_FORMAT": "json"}, cwd=tmp_path)
    assert "127.0.0.1:9999" in out
    assert 'format = "json"' in out
    assert cfg["output"]["format"] == "json"


def test_check_config_env_list_is_comma_separated(tmp_path):
    _, cfg = check_config(env={"FWDGATE_LISTEN": "127.0.0.1:9998,127.0.0.1:9997"}, cwd=tmp_path)
    assert cfg["input"]["listen"] == ["127.0.0.1:9998", "127.0.0.1:9997"]


def test_check_config_defaults(tmp_path):
    _, cfg = check_config(cwd=tmp_path)
    assert cfg["output"]["format"] == "seed"
    assert cfg["input"]["unix_mode"] == "0660"


def test_check_config_tenant_keys_flag(tmp_path):
    _, cfg = check_config("--tenant-key", "a", "--tenant-key", "b", cwd=tmp_path)
    assert cfg["route"]["tenant_keys"] == ["a", "b"]


def write_config(tmp_path, text, name="fwdgate.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_config_file_loaded(tmp_path):
    path = write_config(tmp_path, '[output]\nformat = "json"\n\n[input]\nlisten = ["127.0.0.1:0"]\n')
    out, cfg = check_config("--config", path, cwd=tmp_path)
    assert cfg["output"]["format"] == "json"
    assert cfg["input"]["listen"] == ["127.0.0.1:0"]
    assert 'format = "json"' in out


def test_config_file_from_env_variable(tmp_path):
    path = write_config(tmp_path, '[output]\nformat = "json"\n')
    _, cfg = check_config(env={"FWDGATE_CONFIG": path}, cwd=tmp_path)
    assert cfg["output"]["format"] == "json"


def test_precedence_flag_env_file(tmp_path):
    path = write_config(tmp_path, '[output]\nformat = "json"\n\n[input]\nlisten = ["127.0.0.1:1111"]\n')
    # env beats file
    _, cfg = check_config("--config", path, env={"FWDGATE_FORMAT": "seed"}, cwd=tmp_path)
    assert cfg["output"]["format"] == "seed"
    # flag beats env
    _, cfg = check_config("--config", path, "--format", "json", env={"FWDGATE_FORMAT": "seed"}, cwd=tmp_path)
    assert cfg["output"]["format"] == "json"
    # a repeatable flag replaces the file's list
    _, cfg = check_config("--config", path, "--listen", "127.0.0.1:2222", cwd=tmp_path)
    assert cfg["input"]["listen"] == ["127.0.0.1:2222"]
    # a comma-separated variable replaces it too
    _, cfg = check_config("--config", path, env={"FWDGATE_LISTEN": "127.0.0.1:3333,127.0.0.1:4444"}, cwd=tmp_path)
    assert cfg["input"]["listen"] == ["127.0.0.1:3333", "127.0.0.1:4444"]


def test_check_config_output_round_trips(tmp_path):
    out, cfg = check_config("--listen", "127.0.0.1:9999", "--format", "json", "--tenant-key", "ns",
                            "--topic-suffix", "|", cwd=tmp_path)
    path = write_config(tmp_path, out, name="roundtrip.toml")
    out2, cfg2 = check_config("--config", path, cwd=tmp_path)
    assert cfg2 == cfg
    assert cfg2["output"]["topic_suffix"] == "|"


def test_gateway_runs_with_config_file(start_gateway, subscribe, tmp_path):
    path = write_config(tmp_path, '[output]\nformat = "json"\n\n[input]\nlisten = ["127.0.0.1:0"]\n')
    gw = start_gateway("--config", path)
    sub = subscribe(gw)
    r = fwd.rec("configured", tenant="tc")
    with gw.connect() as c:
        c.send(message("cfg", T0, r))
        [m] = sub.recv_n(1)
    assert m[:2] == [b"tc", b"default"]
    obj = json.loads(m[2])
    assert obj["record"] == r
    assert obj["tag"] == "cfg"
    assert obj["time_ns"] == T0 * 10**9


def test_gateway_format_from_env(start_gateway, subscribe):
    gw = start_gateway(env={"FWDGATE_FORMAT": "json", "FWDGATE_TOPIC_SUFFIX": "|"})
    sub = subscribe(gw)
    r = fwd.rec("env configured", tenant="te")
    with gw.connect() as c:
        c.send(message("env", T0, r))
        [m] = sub.recv_n(1)
    assert m[:2] == [b"te|", b"default"]
    assert json.loads(m[2])["record"] == r


# ------------------------------------------------------------------ bad configurations


def assert_fails(p, status=None, mention=None):
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, "expected failure, exit 0; stdout:\n%s" % p.stdout.decode(errors="replace")
    if status is not None:
        assert p.returncode == status, "exit %r, stderr:\n%s" % (p.returncode, err)
    assert err.strip(), "no message on stderr"
    if mention is not None:
        assert mention in err, "stderr does not mention %r:\n%s" % (mention, err)


def test_bad_format_flag(tmp_path):
    assert_fails(run_fwdgate(["check-config", "--format", "nope"], cwd=tmp_path), mention="nope")
    assert_fails(run_fwdgate(["--format", "nope", "--listen", "127.0.0.1:0", "--zmq-bind", "tcp://127.0.0.1:*"],
                             cwd=tmp_path), mention="nope")


def test_bad_format_env(tmp_path):
    assert_fails(run_fwdgate(["check-config"], env={"FWDGATE_FORMAT": "nope"}, cwd=tmp_path), mention="nope")


def test_config_file_unknown_key(tmp_path):
    path = write_config(tmp_path, '[output]\nformat = "json"\ncolour = "blue"\n')
    assert_fails(run_fwdgate(["check-config", "--config", path], cwd=tmp_path), status=1, mention="colour")
    assert_fails(run_fwdgate(["--config", path, "--listen", "127.0.0.1:0", "--zmq-bind", "tcp://127.0.0.1:*"],
                             cwd=tmp_path), status=1, mention="colour")


def test_config_file_unknown_section(tmp_path):
    path = write_config(tmp_path, '[outptu]\nformat = "json"\n')
    assert_fails(run_fwdgate(["check-config", "--config", path], cwd=tmp_path), status=1, mention="outptu")


def test_config_file_bad_value_in_file(tmp_path):
    path = write_config(tmp_path, '[output]\nformat = "nope"\n')
    assert_fails(run_fwdgate(["check-config", "--config", path], cwd=tmp_path), status=1, mention="nope")


def test_config_file_syntax_error(tmp_path):
    path = write_config(tmp_path, '[output\nformat = \n')
    assert_fails(run_fwdgate(["check-config", "--config", path], cwd=tmp_path), status=1)


def test_config_file_missing(tmp_path):
    path = str(tmp_path / "does-not-exist.toml")
    assert_fails(run_fwdgate(["check-config", "--config", path], cwd=tmp_path), status=1, mention="does-not-exist.toml")


def test_bad_tag_regex(tmp_path):
    assert_fails(run_fwdgate(["check-config", "--tag-regex", "(unclosed"], cwd=tmp_path))


def test_bad_unix_mode(tmp_path):
    assert_fails(run_fwdgate(["check-config", "--unix-mode", "0999"], cwd=tmp_path))


def test_taken_tcp_port(tmp_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        addr = "127.0.0.1:%d" % port
        start = time.monotonic()
        p = run_fwdgate(["--listen", addr, "--zmq-bind", "tcp://127.0.0.1:*", "--log-format", "json"],
                        cwd=tmp_path, timeout=15)
        elapsed = time.monotonic() - start
    finally:
        s.close()
    assert_fails(p, status=1, mention=addr)
    assert elapsed < 10, elapsed


def test_nul_topic_suffix_from_toml(start_gateway, subscribe, tmp_path):
    """The README's recommended exact-tenant setup: topic_suffix = "\\u0000"."""
    path = write_config(tmp_path, '[output]\ntopic_suffix = "\\u0000"\n')
    _, cfg = check_config("--config", path, cwd=tmp_path)
    assert cfg["output"]["topic_suffix"] == "\x00"
    gw = start_gateway("--config", path)
    sub = subscribe(gw, b"t1\x00")
    with gw.connect() as c:
        c.send(message("app", T0, fwd.rec("t10 line", tenant="t10"))
               + message("app", T0, fwd.rec("t1 line", tenant="t1")))
    assert sub.recv_n(1) == [[b"t1\x00", b"default", b"app: t1 line"]]
    assert sub.sync(gw) == []


# ------------------------------------------------------------------ one message, naming its source
# Every bad configuration exits 1 with one line on stderr that names where the value came
# from: the flag, the environment variable, or the file and line.


def fails_with(p, stderr):
    err = p.stderr.decode(errors="replace")
    assert (p.returncode, err) == (1, stderr), "exit %r, stderr:\n%s" % (p.returncode, err)
    assert p.stdout == b""


def test_missing_config_file_is_reported_once(tmp_path):
    path = str(tmp_path / "does-not-exist.toml")
    fails_with(run_fwdgate(["check-config", "--config", path], cwd=tmp_path),
               "fwdgate: error: cannot read config file %s: No such file or directory (os error 2)\n" % path)


def test_bad_variable_is_named_not_its_flag(tmp_path):
    fails_with(run_fwdgate(["check-config"], env={"FWDGATE_FORMAT": "xml"}, cwd=tmp_path),
               'fwdgate: error: environment variable FWDGATE_FORMAT: invalid value "xml" '
               "(possible values: seed, json, batch, null, rainbond)\n")
    fails_with(run_fwdgate([], env={"FWDGATE_LOG_FORMAT": "xml"}, cwd=tmp_path),
               'fwdgate: error: environment variable FWDGATE_LOG_FORMAT: invalid value "xml" '
               "(possible values: text, json)\n")


def test_bad_flag_value_exits_1_naming_the_flag(tmp_path):
    p = run_fwdgate(["check-config", "--format", "xml"], env={"FWDGATE_FORMAT": "json"}, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.decode().startswith("error: invalid value 'xml' for '--format <FORMAT>'\n"), p.stderr


def test_unknown_flag_exits_1(tmp_path):
    p = run_fwdgate(["--lisen", "127.0.0.1:0"], cwd=tmp_path)
    assert p.returncode == 1
    assert "unexpected argument '--lisen'" in p.stderr.decode()


def test_help_and_version_exit_0(tmp_path):
    for args in (["--help"], ["tail", "--help"], ["--version"]):
        p = run_fwdgate(args, cwd=tmp_path)
        assert (p.returncode, p.stderr) == (0, b""), (args, p.returncode, p.stderr)
        assert p.stdout


INVALID_LISTEN = 'invalid configuration: input.listen: "nope" is not a host:port address\n'


def test_semantic_errors_name_the_flag_or_variable(tmp_path):
    fails_with(run_fwdgate(["check-config", "--listen", "nope"], cwd=tmp_path),
               "fwdgate: error: flag --listen: " + INVALID_LISTEN)
    fails_with(run_fwdgate(["--listen", "nope"], cwd=tmp_path),
               "fwdgate: error: flag --listen: " + INVALID_LISTEN)
    fails_with(run_fwdgate(["check-config"], env={"FWDGATE_LISTEN": "127.0.0.1:1,nope"}, cwd=tmp_path),
               'fwdgate: error: environment variable FWDGATE_LISTEN: invalid configuration: input.listen: '
               '"nope" is not a host:port address\n')
    fails_with(run_fwdgate(["check-config", "--tag-regex", "(?P<x>a)"], cwd=tmp_path),
               "fwdgate: error: flag --tag-regex: invalid configuration: "
               "route.tag_regex needs a named group `tenant` or `service`\n")


def test_semantic_errors_in_the_file_name_its_line(tmp_path):
    path = write_config(tmp_path, '[output]\nformat = "json"\n\n[input]\nmax_depth = 128\nlisten = ["nope"]\n')
    fails_with(run_fwdgate(["check-config", "--config", path], cwd=tmp_path),
               "fwdgate: error: %s line 6: %s" % (path, INVALID_LISTEN))
    # the flag replaces the file's bad list: no error
    check_config("--config", path, "--listen", "127.0.0.1:1", cwd=tmp_path)


def test_parse_errors_in_the_file_name_file_and_line(tmp_path):
    path = write_config(tmp_path, '[output]\nformat = "xml"\n')
    p = run_fwdgate(["check-config", "--config", path], cwd=tmp_path)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert err.startswith("fwdgate: error: invalid config file %s: TOML parse error at line 2, column 10\n" % path), err
    assert err.count("unknown variant `xml`") == 1, err


def test_taken_port_is_reported_once(tmp_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        addr = "127.0.0.1:%d" % s.getsockname()[1]
        p = run_fwdgate(["--listen", addr, "--zmq-bind", "tcp://127.0.0.1:*", "--log-level", "error"],
                        cwd=tmp_path, timeout=15)
    finally:
        s.close()
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert err.count("Address already in use (os error 98)") == 1, err
    [line] = [l for l in err.splitlines() if l.startswith("fwdgate: error: ")]
    assert addr in line, err
