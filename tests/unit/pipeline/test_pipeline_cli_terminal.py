"""`workplex run` in a real terminal (a pty): the live progress display, and Ctrl-C
cancelling the run and the processes of its running tasks."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Each task writes its pid, then waits until the test creates `go` (polling a file, so the
# test decides when the work ends).
WAITING = """
name: waiting
stages:
  - name: first
    executor: echo
    input: {a: 1}
  - name: work
    mode: scatter
    executor: command
    scatter: {input: [1, 2], as: n}
    input:
      command: PYTHON
      args:
        - -c
        - "import os, time\\nopen('pids', 'a').write(f'{os.getpid()}\\\\n')\\nwhile not os.path.exists('go'): time.sleep(0.02)"
""".replace("PYTHON", sys.executable)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("WORKPLEX_CONFIG", "CI")}
    out.update(COLUMNS="120", TERM="xterm")
    return out


class Terminal:
    """A child process on a pseudo-terminal, with everything it printed so far."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env(), stdin=slave, stdout=slave, stderr=slave, close_fds=True
        )
        os.close(slave)
        self.text = ""

    def read_until(self, pattern: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            left = end - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{pattern!r} not seen; output so far:\n{self.text}")
        return self.text

    def finish(self, timeout: float = 30) -> int:
        while self._read(timeout):
            pass
        return self.proc.wait(timeout=timeout)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        # Colours and cursor moves are dropped: the tests read the words.
        self.text += ANSI.sub("", data.decode(errors="replace"))
        return bool(data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def pids(tmp_path: Path, count: int) -> list[int]:
    path = tmp_path / "pids"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = path.read_text().split() if path.exists() else []
        if len(found) >= count:
            return [int(p) for p in found]
        time.sleep(0.02)
    raise AssertionError("the tasks did not start")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "waiting.yaml"
    path.write_text(WAITING)
    return path


def test_a_terminal_shows_one_bar_per_running_stage(tmp_path: Path, pipeline: Path) -> None:
    term = Terminal([sys.executable, "-m", "workplex.cli", "run", str(pipeline), "--no-store"], tmp_path)
    try:
        pids(tmp_path, 2)
        # While the tasks wait, the bar of `work` shows it running with 0 of 2 done.
        term.read_until(r"work \[running\].*0/2")
        (tmp_path / "go").touch()
        assert term.finish() == 0
    finally:
        term.close()
    assert re.search(r"first \[succeeded\].*1/1", term.text)
    assert re.search(r"work \[succeeded\].*2/2", term.text)
    assert "succeeded in" in term.text  # the summary after the bars


def test_json_on_a_terminal_prints_only_the_result(tmp_path: Path, pipeline: Path) -> None:
    (tmp_path / "go").touch()
    term = Terminal(
        [sys.executable, "-m", "workplex.cli", "run", str(pipeline), "--no-store", "--json"], tmp_path
    )
    try:
        assert term.finish() == 0
    finally:
        term.close()
    data = json.loads(term.text.replace("\r\n", "\n"))
    assert data["status"] == "succeeded"


@pytest.mark.parametrize(
    ("sig", "stored"),
    [(signal.SIGINT, True), (signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["ctrl-c-stored", "ctrl-c-no-store", "sigterm-stored"],
)
def test_ctrl_c_or_sigterm_cancels_the_run_and_kills_its_processes(
    tmp_path: Path, pipeline: Path, sig: signal.Signals, stored: bool
) -> None:
    store = ["--store", f"sqlite:///{tmp_path / 'runs.db'}"] if stored else ["--no-store"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workplex.cli", "run", str(pipeline), *store],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        running = pids(tmp_path, 2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    match = re.search(r"run (r-\w+) cancelled", err)
    assert match, err
    if stored:
        assert f"resume it with: workplex resume {match.group(1)}" in err
    else:
        assert "resume" not in err
    # The task processes went with the run, without `go` ever being created.
    assert not (tmp_path / "go").exists()
    assert [pid for pid in running if alive(pid)] == []


def test_sigterm_on_exec_kills_the_commands_process_group(tmp_path: Path) -> None:
    script = "import os, time\nopen('pids', 'a').write(f'{os.getpid()}\\n')\ntime.sleep(120)"
    payload = json.dumps({"command": sys.executable, "args": ["-c", script]})
    proc = subprocess.Popen(
        [sys.executable, "-m", "workplex.cli", "exec", "command", "--input", payload],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        running = pids(tmp_path, 1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert [pid for pid in running if alive(pid)] == []
