"""A real Docker engine for the docker executor's tests.

``DOCKER_HOST`` names an engine to use. Without it, a private ``dockerd`` (Debian's
``docker.io``) is started as root with its data, exec root and socket under a temporary
directory, no bridge and no iptables changes, and stopped at the end of the session.
Where no engine can be had the tests skip with the reason (and fail when ``CI`` is set).

Test images are built ``FROM scratch`` with the static busybox binary copied in, since
no registry is reachable.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import require, unavailable

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
TEST_IMAGE = "workplex-test/busybox:1"

# FROM scratch: no shell at build time, so the build arg is made observable through ENV.
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
ARG GREETING=unset
ENV GREETING=$GREETING PATH=/bin
ENTRYPOINT ["/bin/busybox"]
"""


def _socket_answers(path: str) -> bool:
    # A raw probe first: the SDK leaks its socket when a unix connect fails.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes] | None, log: Path | None) -> str:
    """Poll the engine until it answers a ping; returns '' on success, else why not."""
    import docker

    deadline = time.monotonic() + 30
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log else ""
            return f"dockerd exited with {proc.returncode}:\n{tail}"
        if base_url.startswith("unix://") and not _socket_answers(base_url[len("unix://") :]):
            last = "socket not accepting connections yet"
            time.sleep(0.1)
            continue
        try:
            client = docker.DockerClient(base_url=base_url, timeout=5)
            try:
                if client.ping():
                    return ""
            finally:
                client.close()
        except Exception as exc:  # not up yet
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    return f"no answer from {base_url} within 30s ({last})"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _start_dockerd(root: Path) -> tuple[subprocess.Popen[bytes] | None, str, str]:
    """Start a private dockerd; returns (process, base_url, '') or (None, '', why not)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return None, "", "dockerd is not installed (Debian package docker.io; see .ci/system-deps)"
    if os.geteuid() != 0:
        return None, "", "starting a private dockerd needs root (or set DOCKER_HOST)"
    sock = root / "docker.sock"
    base_url = f"unix://{sock}"
    problems: list[str] = []
    # overlay2 first; vfs where the kernel or filesystem has no overlayfs.
    for extra in ([], ["--storage-driver", "vfs"]):
        data = root / f"data{len(problems)}"
        log = root / f"dockerd{len(problems)}.log"
        argv = [
            dockerd,
            "--iptables=false",
            "--ip-forward=false",
            "--bridge=none",
            "--data-root",
            str(data),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "docker.pid"),
            "-H",
            base_url,
            *extra,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        why = _wait_ready(base_url, proc, log)
        if not why:
            return proc, base_url, ""
        _stop(proc)
        problems.append(f"{' '.join(argv)}: {why}")
    return None, "", "\n".join(problems)


def _unmount_under(root: Path) -> None:
    """Detach what dockerd leaves mounted in its exec root (``netns/default``, an nsfs)."""
    prefix = f"{root}/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="session")
def docker_url() -> Iterator[str]:
    """The URL of a Docker engine that answers (DOCKER_HOST, or a private dockerd)."""
    require("docker")
    given = os.environ.get("DOCKER_HOST")
    if given:
        why = _wait_ready(given, None, None)
        if why:
            unavailable(f"DOCKER_HOST={given}: {why}")
        yield given
        return
    # A short path: unix socket paths are limited to about 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="wpx-dockerd-"))
    proc, base_url, why = _start_dockerd(root)
    try:
        if proc is None:
            unavailable(why)
        yield base_url
    finally:
        if proc is not None:
            _stop(proc)
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_client(docker_url: str) -> Iterator[Any]:
    import docker

    client = docker.DockerClient(base_url=docker_url)
    try:
        yield client
    finally:
        client.close()


def _is_static_elf(path: str) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP (dynamic loader) header."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    types = (int.from_bytes(table[i : i + 4], "little") for i in range(0, len(table), phentsize))
    return 3 not in types  # PT_INTERP


def _busybox() -> str:
    for path in BUSYBOX_CANDIDATES:
        if os.path.isfile(path) and _is_static_elf(path):
            return path
    unavailable("no static busybox binary (Debian package busybox-static)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def busybox_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context: a Dockerfile FROM scratch and the static busybox binary."""
    ctx = tmp_path_factory.mktemp("busybox-context")
    shutil.copy2(_busybox(), ctx / "busybox")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


@pytest.fixture(scope="session")
def test_image(docker_client: Any, busybox_context: Path) -> str:
    """A tiny busybox image on the engine, built once per session."""
    docker_client.images.build(path=str(busybox_context), tag=TEST_IMAGE, rm=True)
    return TEST_IMAGE
