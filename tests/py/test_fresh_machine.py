"""What a fresh machine sees, and that the test command sees the same on every run: its
Docker daemon is a private one with an empty image store (scripts/start-dockerd.sh), and
scripts/make-busybox-image.sh makes local/busybox from nothing there, refusing a busybox
that cannot run alone in the image."""

import os
import subprocess

import peers
from peers import fail

SCRIPT = str(peers.SCRIPTS / "make-busybox-image.sh")


def run(argv, env, timeout=120):
    try:
        return subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail("`%s` did not finish within %d s" % (" ".join(argv), timeout))


def images(env):
    p = run([peers.docker_bin(), "images", "-q"], env, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_make_busybox_image_on_an_empty_image_store(empty_dockerd):
    env = empty_dockerd.env()
    assert images(env) == [], "the private daemon starts with an empty image store"
    made = run([SCRIPT], env)
    assert made.returncode == 0, made.stderr.decode()
    assert made.stdout.decode().strip() == "make-busybox-image: made local/busybox:latest"
    # The image's /bin/sh runs, with the applets the tests use.
    p = run([peers.docker_bin(), "run", "--rm", "--network", "none", peers.BUSYBOX_IMAGE,
             "sh", "-c", "echo $((6 * 7)); seq 2; printf '%s\\n' done | cat | head -n 1"], env)
    assert (p.returncode, p.stdout) == (0, b"42\n1\n2\ndone\n"), p.stderr.decode()
    again = run([SCRIPT], env)
    assert (again.returncode, again.stdout.decode().strip()) == (
        0, "make-busybox-image: local/busybox:latest exists already")
    assert len(images(env)) == 1


def test_make_busybox_image_refuses_a_dynamically_linked_busybox(empty_dockerd, tmp_path):
    """The check that the old `ldd` pipeline got wrong: a binary that needs a loader and
    libraries cannot run in the image's empty root, and is refused before any import."""
    env = dict(empty_dockerd.env(), BUSYBOX="/bin/bash")
    p = run([SCRIPT, "local/refused:latest"], env)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert b"/bin/bash does not run in an empty root" in p.stderr, p.stderr
    assert images(env) == [], "nothing was imported"


def test_the_session_daemon_is_a_private_one(dockerd):
    """The tests never use the machine's own daemon: the one they talk to has its own
    socket and a data root of its own."""
    host = os.environ.get("DOCKER_HOST", "")
    assert host.startswith("unix:///tmp/fwdgate-dockerd."), host
    root = dockerd.info["DockerRootDir"]
    assert root != "/var/lib/docker" and root.endswith("/data"), root
