"""Fixtures of the store's integration tests: store URLs for SQLite and PostgreSQL, and a
way to run the ``workplex`` command line as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

WORK_DIR = Path(__file__).parent / "work"


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ``workplex`` subprocesses: the work module importable, no user files."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(WORK_DIR), env.get("PYTHONPATH", "")) if p)
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env.pop("WORKPLEX_STORE", None)
    env.pop("WORKPLEX_CONFIG", None)
    return env


@pytest.fixture(scope="session")
def postgres_store_base(postgres_url: str) -> Iterator[str]:
    """A database of its own on the session's PostgreSQL server (dropped at the end)."""
    import asyncpg

    name = f"workplex_store_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base, _, _ = postgres_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    base: str = request.getfixturevalue("postgres_store_base")
    return base


async def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run ``python -m workplex.cli ARGS`` to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workplex.cli",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
