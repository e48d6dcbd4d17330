"""The ``command`` executor with real processes: output, exit codes, limits, process groups,
and the allow/block lists against bypass attempts."""

# Tests inspect real files right after each await; blocking there is the point.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import unavailable
from workplex import Registry, Result, Task
from workplex.config import parse_config
from workplex.errors import ValidationError
from workplex.executors.command import Command

PY = sys.executable
RM = shutil.which("rm")
assert RM is not None


def make_registry(**settings: Any) -> Registry:
    registry = Registry(parse_config({"executors": {"command": settings}}), discover=False)
    registry.register(Command)
    return registry


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    async with make_registry() as reg:
        yield reg


async def run(registry: Registry, **payload: Any) -> Result:
    return await registry.execute(Task("command", payload))


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a non-reaping init counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, within: float = 10.0) -> bool:
    """Poll until ``pid`` is gone (SIGKILL delivery and reaping by init are asynchronous)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.01)
    return not alive(pid)


async def wait_for(predicate: Callable[[], bool], within: float = 20.0) -> None:
    end = time.monotonic() + within
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


# A program that starts a grandchild, reports both pids, then waits forever. With
# `ignore_term` both ignore SIGTERM, so only the SIGKILL after the grace stops them.
FAMILY = """
import os, signal, subprocess, sys, time
ignore = sys.argv[1] == "1"
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time\\n"
if ignore:
    code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
code += "time.sleep(120)\\n"
child = subprocess.Popen([sys.executable, "-c", code])
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
print("started", flush=True)
time.sleep(120)
"""


# ---- outcomes --------------------------------------------------------------------------
async def test_runs_a_program_and_captures_output(registry: Registry) -> None:
    result = await run(registry, command="echo", args=["hello", "world"])
    assert result.success, result.error
    assert result.output["stdout"] == "hello world\n"
    assert result.output["stderr"] == ""
    assert result.exit_code == 0
    assert result.output["program"].endswith("/echo")
    assert result.output["pid"] > 0


async def test_nonzero_exit_is_an_outcome_not_an_error(registry: Registry) -> None:
    result = await run(
        registry,
        command=PY,
        args=["-c", "import sys; print('out'); sys.stderr.write('err'); sys.exit(3)"],
    )
    assert result.success and result.error is None
    assert result.exit_code == 3
    assert result.output["exit_code"] == 3
    assert result.output["stdout"] == "out\n"
    assert result.output["stderr"] == "err"


async def test_killed_by_a_signal_gives_a_negative_exit_code(registry: Registry) -> None:
    result = await run(registry, command=PY, args=["-c", "import os; os.kill(os.getpid(), 9)"])
    assert result.success
    assert result.exit_code == -9


async def test_stdin_is_fed_to_the_program(registry: Registry) -> None:
    text = "line one\nline two\n" * 50_000  # larger than a pipe buffer
    async with make_registry(max_output_bytes=4_000_000) as reg:
        result = await run(reg, command="cat", stdin=text)
    assert result.success
    assert result.output["stdout"] == text
    result = await run(registry, command="cat")
    assert result.output["stdout"] == ""  # no stdin: /dev/null, cat ends at once


async def test_env_is_merged_over_the_worker_environment(registry: Registry) -> None:
    code = "import os; print(os.environ['WPX_TEST'], 'PATH' in os.environ)"
    result = await run(registry, command=PY, args=["-c", code], env={"WPX_TEST": "a b"})
    assert result.output["stdout"] == "a b True\n"


async def test_clear_env_starts_from_nothing(registry: Registry) -> None:
    printenv = shutil.which("printenv")
    assert printenv
    result = await run(registry, command=printenv, env={"ONLY": "1"}, clear_env=True)
    assert result.output["stdout"] == "ONLY=1\n"


async def test_working_dir(registry: Registry, tmp_path: Path) -> None:
    result = await run(registry, command="pwd", working_dir=str(tmp_path))
    assert result.output["stdout"].strip() == str(tmp_path)
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho from-tool\n")
    (tmp_path / "tool.sh").chmod(0o755)
    # A relative program path is relative to the working directory.
    result = await run(registry, command="./tool.sh", working_dir=str(tmp_path))
    assert result.success, result.error
    assert result.output["stdout"] == "from-tool\n"
    missing = tmp_path / "missing"
    result = await run(registry, command="pwd", working_dir=str(missing))
    assert not result.success
    assert result.error is not None and "working_dir" in result.error.message
    assert str(missing) in result.error.message


async def test_output_caps_truncate_with_a_marker(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('x' * 300000); sys.stderr.write('y' * 50)"
    async with make_registry(max_output_bytes=100) as reg:
        result = await run(reg, command=PY, args=["-c", code])
    out = result.output
    assert result.success and result.exit_code == 0  # the program was never blocked
    assert out["stdout"].startswith("x" * 100)
    assert "truncated: 299900 more bytes" in out["stdout"]
    assert out["stdout_truncated"] is True
    assert out["stderr"] == "y" * 50
    assert out["stderr_truncated"] is False


async def test_missing_and_unrunnable_programs(registry: Registry, tmp_path: Path) -> None:
    result = await run(registry, command="no-such-program-wpx")
    assert result.error is not None and result.error.type == "PermanentError"
    assert "'no-such-program-wpx' not found on PATH" in result.error.message
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program")
    result = await run(registry, command=str(plain))
    assert result.error is not None and "cannot run" in result.error.message
    assert str(plain) in result.error.message


async def test_many_at_once_with_few_threads() -> None:
    async with make_registry(threads=2) as reg:
        results = await asyncio.gather(
            *(run(reg, command="echo", args=[str(i)]) for i in range(30))
        )
    assert [r.output["stdout"] for r in results] == [f"{i}\n" for i in range(30)]


async def test_input_is_validated_with_field_paths(registry: Registry) -> None:
    with pytest.raises(ValidationError) as err:
        registry.validate(Task("command", {"command": "echo", "args": ["a\x00b"]}))
    assert "args" in str(err.value) and "NUL" in str(err.value)
    with pytest.raises(ValidationError) as err:
        registry.validate(Task("command", {"command": "echo", "tiemout": 3}))
    assert "tiemout" in str(err.value)
    with pytest.raises(ValidationError) as err:
        registry.validate(Task("command", {"command": "echo", "timeout": -1}))
    assert "timeout" in str(err.value)


# ---- process groups ----------------------------------------------------------------------
@pytest.mark.parametrize("ignore_term", [False, True], ids=["term", "ignores-term"])
async def test_timeout_kills_the_whole_process_group(tmp_path: Path, ignore_term: bool) -> None:
    pids_file = tmp_path / "pids"
    async with make_registry(kill_grace=0.2) as reg:
        result = await run(
            reg,
            command=PY,
            args=["-c", FAMILY, "1" if ignore_term else "0", str(pids_file)],
            timeout=3,
        )
    leader, grandchild = map(int, pids_file.read_text().split())
    try:
        assert not result.success
        assert result.error is not None and result.error.type == "TaskTimeoutError"
        assert result.error.retryable
        assert "process group was killed" in result.error.message
        assert result.error.details is not None and "started" in result.error.details["stdout"]
        assert not alive(leader)  # reaped before the result came back
        assert wait_gone(grandchild)
    finally:
        kill_quietly(leader)
        kill_quietly(grandchild)


async def test_cancellation_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    async with make_registry(kill_grace=0.5) as reg:
        task = asyncio.create_task(run(reg, command=PY, args=["-c", FAMILY, "1", str(pids_file)]))
        await wait_for(pids_file.exists)
        leader, grandchild = map(int, pids_file.read_text().split())
        try:
            assert alive(leader) and alive(grandchild)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not alive(leader)
            assert wait_gone(grandchild)
        finally:
            kill_quietly(leader)
            kill_quietly(grandchild)


LEFTOVER = """
import subprocess, sys
keep_pipe = sys.argv[1] == "1"
out = None if keep_pipe else subprocess.DEVNULL
child = subprocess.Popen(["sleep", "120"], stdout=out, stderr=out)
print(child.pid, flush=True)
"""


@pytest.mark.parametrize("keep_pipe", [False, True], ids=["detached-stdio", "holds-stdout"])
async def test_leftovers_of_a_finished_program_are_killed(keep_pipe: bool) -> None:
    async with make_registry(kill_grace=0.2) as reg:
        result = await run(reg, command=PY, args=["-c", LEFTOVER, "1" if keep_pipe else "0"])
    pid = int(result.output["stdout"].split()[0])
    try:
        assert result.success and result.exit_code == 0
        assert wait_gone(pid)
    finally:
        kill_quietly(pid)


async def test_leftovers_may_be_kept_when_configured() -> None:
    async with make_registry(kill_leftovers=False) as reg:
        result = await run(reg, command=PY, args=["-c", LEFTOVER, "0"])
    pid = int(result.output["stdout"].split()[0])
    try:
        assert alive(pid)
    finally:
        kill_quietly(pid)


# ---- allow and block lists -----------------------------------------------------------------
@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    path.write_text("still here")
    return path


def refused(result: Result, reason: str) -> bool:
    return (
        not result.success
        and result.error is not None
        and result.error.type == "PermanentError"
        and (result.error.details or {}).get("reason") == reason
    )


async def test_blocked_program_in_every_path_form(
    registry: Registry, canary: Path, tmp_path: Path
) -> None:
    link = tmp_path / "harmless"
    link.symlink_to(RM)
    same_name_copy = tmp_path / "bin" / "rm"
    same_name_copy.parent.mkdir()
    shutil.copy(RM, same_name_copy)
    forms = [
        "rm",
        RM,
        "/bin/rm",
        "/usr/bin/../bin/rm",
        "/usr/./bin/rm",
        "//usr//bin//rm",
        str(link),
        str(same_name_copy),
    ]
    for form in forms:
        result = await run(registry, command=form, args=["-f", str(canary)])
        assert refused(result, "blocked"), (form, result.to_dict())
        assert result.error is not None and form in result.error.message
    rel = os.path.relpath("/usr/bin/rm", tmp_path)
    result = await run(registry, command=rel, args=["-f", str(canary)], working_dir=str(tmp_path))
    assert refused(result, "blocked"), result.to_dict()
    assert canary.exists()


async def test_other_default_blocked_programs(registry: Registry) -> None:
    for name in ("dd", "sudo", "shutdown", "mkfs.ext4"):
        path = shutil.which(name) or (
            f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
        )
        if path is None:
            continue
        result = await run(registry, command=path, args=["--help"])
        assert refused(result, "blocked"), (name, result.to_dict())


@pytest.mark.parametrize(
    "argv",
    [
        ["env", "rm"],
        ["xargs", "rm"],
        ["nice", "rm"],
        ["nohup", "rm"],
        ["timeout", "5", "rm"],
        ["setsid", "rm"],
        ["stdbuf", "-o0", "rm"],
        ["busybox", "rm"],
        ["find", ".", "-delete"],
    ],
    ids=lambda a: a[0],
)
async def test_exec_wrappers_are_refused(registry: Registry, canary: Path, argv: list[str]) -> None:
    if shutil.which(argv[0]) is None:
        unavailable(f"{argv[0]} is not installed here (.ci/system-deps installs busybox)")
    result = await run(registry, command=argv[0], args=[*argv[1:], str(canary)])
    assert refused(result, "wrapper"), result.to_dict()
    assert canary.exists()


async def test_shells_are_refused_without_the_shell_setting(
    registry: Registry, canary: Path
) -> None:
    for shell in ("sh", "bash", "dash", "/bin/sh"):
        if shutil.which(shell) is None:
            continue
        result = await run(registry, command=shell, args=["-c", f"rm -f {canary}"])
        assert refused(result, "shell"), (shell, result.to_dict())
    result = await run(registry, command=f"rm -f {canary}")  # a shell string as a program name
    assert not result.success and result.error is not None
    assert "put its arguments in `args`" in result.error.message
    result = await run(registry, command=f"echo hi; rm -f {canary}", shell=True)
    assert refused(result, "shell"), result.to_dict()
    assert result.error is not None and "shell: true" in result.error.message
    assert canary.exists()


async def test_shell_mode_when_allowed(canary: Path) -> None:
    async with make_registry(shell=True) as reg:
        result = await run(reg, command='echo "$1-$2" | tr a-z A-Z', args=["a", "b"], shell=True)
        assert result.success and result.output["stdout"] == "A-B\n"
        for line in (f"rm -f {canary}", f"echo x && /bin/rm {canary}", f"true;rm {canary}"):
            result = await run(reg, command=line, shell=True)
            assert refused(result, "blocked"), (line, result.to_dict())
        result = await run(reg, command="bash", args=["-c", f"rm -f {canary}"])
        assert refused(result, "blocked"), result.to_dict()
        result = await run(reg, command="sh", args=["-c", "echo via-sh"])
        assert result.output["stdout"] == "via-sh\n"
    assert canary.exists()


async def test_allowed_list_matches_the_resolved_program(tmp_path: Path, canary: Path) -> None:
    link = tmp_path / "say"
    link.symlink_to(shutil.which("echo") or "/bin/echo")
    async with make_registry(allowed_commands=["echo"]) as reg:
        assert (await run(reg, command="echo", args=["ok"])).output["stdout"] == "ok\n"
        assert (await run(reg, command=str(link), args=["ok"])).output["stdout"] == "ok\n"
        result = await run(reg, command="true")
        assert refused(result, "not_allowed"), result.to_dict()
        assert result.error is not None and "allowed_commands" in result.error.message
        result = await run(reg, command="echo x", shell=True)
        assert refused(result, "shell")


async def test_an_explicitly_allowed_wrapper_still_may_not_run_a_blocked_program(
    canary: Path,
) -> None:
    async with make_registry(allowed_commands=["env", "printenv"]) as reg:
        result = await run(reg, command="env", args=["A=1", "printenv", "A"])
        assert result.success and result.output["stdout"] == "1\n"
        result = await run(reg, command="env", args=["rm", "-f", str(canary)])
        assert refused(result, "blocked"), result.to_dict()
    assert canary.exists()


async def test_custom_block_list_by_path_and_glob(tmp_path: Path) -> None:
    tool = tmp_path / "tool-v2"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    async with make_registry(blocked_commands=["tool-*", "printf"]) as reg:
        assert refused(await run(reg, command=str(tool)), "blocked")
        assert refused(await run(reg, command="printf", args=["x"]), "blocked")
        # rm is no longer blocked when the list is replaced: the list is the config's.
        victim = tmp_path / "victim"
        victim.write_text("x")
        result = await run(reg, command="rm", args=[str(victim)])
        assert result.success and result.exit_code == 0
        assert not victim.exists()


def test_the_executor_serves_one_event_loop_after_another_without_leaking_descriptors() -> None:
    """Finished jobs reach each loop through its own channel; old loops' channels are freed."""
    import asyncio as aio

    from workplex import Registry, Task

    registry = Registry()

    async def once() -> int | None:
        result = await registry.execute(Task("command", {"command": "true"}))
        assert result.success, result.error
        return result.exit_code

    assert aio.run(once()) == 0  # warm up: threads and the first channel exist now
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assert aio.run(once()) == 0
    after = len(os.listdir("/proc/self/fd"))
    aio.run(registry.shutdown())
    assert after <= before
