"""What people install: the Debian package (installed with dpkg for real, checked with
dpkg -L, systemd-analyze verify of its two units and the installed files themselves,
then purged) and the container image built offline from the release binary.

The package: $FWDGATE_DEB, else the one scripts/build-deb.sh left in target/debian/. The
release binary: $FWDGATE_RELEASE_BIN, else target/release/fwdgate.
"""

import glob
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import peers
from conftest import REPO_ROOT, clean_env
from peers import fail, run_cmd

pytestmark = pytest.mark.release

RELEASE_BIN = os.environ.get("FWDGATE_RELEASE_BIN", str(REPO_ROOT / "target" / "release" / "fwdgate"))
UNIT = "/usr/lib/systemd/system/fwdgate.service"
PROXY_UNIT = "/usr/lib/systemd/system/fwdgate-proxy.service"
CONFIG = "/etc/fwdgate/fwdgate.toml"
INSTALLED = [
    "/usr/bin/fwdgate",
    CONFIG,
    UNIT,
    PROXY_UNIT,
    "/usr/share/man/man1/fwdgate.1.gz",
    "/usr/share/man/man1/fwdgate-tail.1.gz",
    "/usr/share/man/man1/fwdgate-check-config.1.gz",
    "/usr/share/bash-completion/completions/fwdgate",
    "/usr/share/zsh/vendor-completions/_fwdgate",
    "/usr/share/fish/vendor_completions.d/fwdgate.fish",
]


def release_version():
    if not os.access(RELEASE_BIN, os.X_OK):
        fail("no release binary at %s (cargo build --release, or set FWDGATE_RELEASE_BIN)" % RELEASE_BIN)
    return subprocess.run([RELEASE_BIN, "--version"], capture_output=True, timeout=20, check=True).stdout


def deb_path():
    path = os.environ.get("FWDGATE_DEB")
    if not path:
        found = sorted(glob.glob(str(REPO_ROOT / "target" / "debian" / "fwdgate_*.deb")), key=os.path.getmtime)
        if not found:
            fail("no .deb in target/debian (run scripts/build-deb.sh, or set FWDGATE_DEB)")
        path = found[-1]
    return path


def run(argv, peer, **kw):
    return run_cmd(argv, peer, timeout=120, **kw)


def installed_version():
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "fwdgate"], capture_output=True, timeout=30)
    return p.stdout.decode() if p.returncode == 0 else None


@pytest.fixture
def installed_deb():
    """The package installed with dpkg -i, purged afterwards, pass or fail."""
    if os.geteuid() != 0:
        fail("installing the .deb needs root")
    before = installed_version()
    if before and not before.startswith(("deinstall", "unknown", "not-installed")):
        fail("a fwdgate package is installed on this machine already (%s): this test would replace it" % before)
    deb = deb_path()
    run(["dpkg", "-i", deb], "dpkg -i")
    try:
        yield deb
    finally:
        run(["dpkg", "--purge", "fwdgate"], "dpkg --purge")
    for path in INSTALLED:
        assert not os.path.exists(path), "%s left after dpkg --purge" % path


def test_deb_installs_binary_man_completions_unit_and_config(installed_deb):
    listed = set(run(["dpkg", "-L", "fwdgate"], "dpkg -L").stdout.decode().split())
    missing = [p for p in INSTALLED if p not in listed or not os.path.isfile(p)]
    assert not missing, "not installed: %r" % missing
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "fwdgate"], "dpkg-query").stdout.decode()
    assert CONFIG in conffiles, conffiles
    # the installed binary is this build, and takes the installed configuration as it is
    assert run(["/usr/bin/fwdgate", "--version"], "fwdgate").stdout == release_version()
    out = run(["/usr/bin/fwdgate", "check-config", "--config", CONFIG], "fwdgate check-config",
              env=clean_env()).stdout.decode()
    assert 'listen = ["0.0.0.0:24224"]' in out, out
    # man finds the page; bash loads the completion
    assert run(["man", "-w", "fwdgate"], "man").stdout.decode().strip() == "/usr/share/man/man1/fwdgate.1.gz"
    r = run(["bash", "-c", "source /usr/share/bash-completion/completions/fwdgate && complete -p fwdgate"], "bash")
    assert r.stdout.decode().strip().endswith(" fwdgate")


def test_deb_unit_passes_systemd_analyze_verify(installed_deb):
    # verify loads the units as systemd would, and checks that ExecStart's binary exists
    # and that the Documentation= man page is installed
    for unit in (UNIT, PROXY_UNIT):
        r = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, timeout=60)
        assert (r.returncode, r.stderr.decode()) == (0, ""), (unit, r.stderr.decode())
    proxy_exec = re.search(r"^ExecStart=(.*)$", open(PROXY_UNIT).read(), re.M).group(1).split()
    assert proxy_exec[:2] == ["/usr/bin/fwdgate", "proxy"], proxy_exec
    unit = open(UNIT).read()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
    assert exec_start == ["/usr/bin/fwdgate", "--config", CONFIG], exec_start
    r = subprocess.run(exec_start[:1] + ["check-config"] + exec_start[1:], capture_output=True, timeout=30,
                       env=clean_env())
    assert r.returncode == 0, r.stderr


def test_image_from_release_binary(dockerd):
    """docker/Dockerfile.offline with the release binary staged by scripts/stage-image.sh:
    the image runs and reports the same version, without a registry."""
    version = release_version()
    stage = tempfile.mkdtemp(prefix="fwdgate-image-")
    iidfile = os.path.join(stage, "iid")
    image = None
    try:
        run([str(REPO_ROOT / "scripts" / "stage-image.sh"), RELEASE_BIN, os.path.join(stage, "ctx")],
            "stage-image")
        run([peers.docker_bin(), "build", "-q", "--iidfile", iidfile, "--label", peers.TEST_LABEL,
             "-f", str(REPO_ROOT / "docker" / "Dockerfile.offline"), os.path.join(stage, "ctx")], "docker build")
        image = open(iidfile).read().strip()
        out = peers.docker("run", "--rm", "--network", "host", image, "--version").stdout
        assert out == version
        r = peers.docker("run", "--rm", "--network", "host", image, "check-config", "--listen", "127.0.0.1:24224")
        assert b'listen = ["127.0.0.1:24224"]' in r.stdout
        user = peers.docker_out("image", "inspect", "--format", "{{.Config.User}}", image)
        assert user == "65534:65534"
    finally:
        if image:
            peers.docker("image", "rm", image, check=False)
        shutil.rmtree(stage, ignore_errors=True)
