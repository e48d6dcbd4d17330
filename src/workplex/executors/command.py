"""``command``: runs a program with argv, env, working directory, stdin, timeout and output caps.

Security: the allow and block lists of the config are matched on the *resolved*
executable (found on ``PATH``, symlinks and ``..`` resolved, and by file identity), so
``rm``, ``/bin/rm``, ``/usr/bin/../bin/rm`` and a symlink to ``rm`` are the same program.
Programs that exist to run another program (``env``, ``xargs``, ``nice``, ``timeout``,
``busybox``...) are refused unless explicitly allowed, and shells only when the config
sets ``shell: true``. No shell is involved unless the input asks for one and the config
allows it.

Processes: every program starts in its own session (and so its own process group). On
timeout or cancellation the whole group gets SIGTERM, then SIGKILL after ``kill_grace``
seconds, and the program is reaped before ``execute`` returns or raises. When the program
exits normally, whatever it left running in its group is killed too (``kill_leftovers``).

Speed: spawning and waiting happen on a small pool of threads (``subprocess.Popen`` with
``poll`` on the pipes and a pidfd), which beats asyncio's subprocess transport by a wide
margin; timeouts and cancellation reach the waiting thread through a wake-up pipe, and
finished runs reach the event loop through one eventfd per loop (not one
``call_soon_threadsafe`` each).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import queue
import re
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workplex.errors import PermanentError, TaskTimeoutError
from workplex.executor import Capabilities, Context, Executor, ExecutorConfig, SecurityLevel

DEFAULT_BLOCKED = [
    "rm",
    "shred",
    "dd",
    "mkfs",
    "mkfs.*",
    "mkswap",
    "wipefs",
    "fdisk",
    "sfdisk",
    "parted",
    "mount",
    "umount",
    "sudo",
    "su",
    "doas",
    "pkexec",
    "shutdown",
    "reboot",
    "halt",
    "poweroff",
    "init",
    "telinit",
    "systemctl",
    "kill",
    "pkill",
    "killall",
]
"""Blocked unless the config says otherwise. Names may be globs (``mkfs.*``)."""

EXEC_WRAPPERS = frozenset(
    {
        "env",
        "xargs",
        "busybox",
        "toybox",
        "nice",
        "ionice",
        "renice",
        "timeout",
        "nohup",
        "setsid",
        "stdbuf",
        "time",
        "chroot",
        "chrt",
        "taskset",
        "unshare",
        "nsenter",
        "flock",
        "watch",
        "script",
        "strace",
        "ltrace",
        "gdb",
        "parallel",
        "setpriv",
        "capsh",
        "systemd-run",
        "runuser",
        "sg",
        "newgrp",
        "find",
        "sudo",
        "su",
        "doas",
        "pkexec",
        "start-stop-daemon",
        "run-parts",
        "catchsegv",
        "prlimit",
        "numactl",
        "faketime",
        "fakeroot",
        "firejail",
        "bwrap",
        "proot",
        "expect",
        "rlwrap",
    }
)
"""Programs whose job is to run another program: refused unless explicitly allowed."""

SHELLS = frozenset(
    {
        "sh",
        "bash",
        "dash",
        "ash",
        "zsh",
        "ksh",
        "ksh93",
        "mksh",
        "pdksh",
        "csh",
        "tcsh",
        "fish",
        "yash",
        "rbash",
        "posh",
        "elvish",
        "nu",
        "xonsh",
    }
)
"""Shells: refused unless the config sets ``shell: true`` (or allows one explicitly)."""

SHELL_PATH = "/bin/sh"
_SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_CHUNK = 65536
_HAS_PIDFD = hasattr(os, "pidfd_open")
_HAS_EVENTFD = hasattr(os, "eventfd")
_ONE = (1).to_bytes(8, sys.byteorder)  # adds 1 to an eventfd (any byte wakes the pipe fallback)
_devnull_fd = -1  # one /dev/null for every program without stdin (saves an open+close per spawn)
_devnull_lock = threading.Lock()


def _devnull() -> int:
    global _devnull_fd
    if _devnull_fd < 0:
        with _devnull_lock:
            if _devnull_fd < 0:
                _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull_fd


# ---- models -------------------------------------------------------------------------------
class CommandInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(
        min_length=1,
        description="Program name (looked up on PATH) or path; with `shell`, a shell command line.",
    )
    args: list[str] = Field(default_factory=list, description="Arguments, one per item.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables, merged over the worker's own."
    )
    clear_env: bool = Field(
        default=False, description="Start from an empty environment instead of the worker's."
    )
    working_dir: str | None = Field(default=None, description="Directory to run in.")
    stdin: str | None = Field(default=None, description="Text written to the program's stdin.")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds before the process group is killed."
    )
    shell: bool = Field(
        default=False,
        description="Run `command` under /bin/sh -c (only when the config allows `shell`).",
    )

    @field_validator("command", "working_dir", "stdin")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("must not contain NUL characters")
        return v

    @field_validator("args")
    @classmethod
    def _args_no_nul(cls, v: list[str]) -> list[str]:
        for i, arg in enumerate(v):
            if "\x00" in arg:
                raise ValueError(f"item {i} must not contain NUL characters")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or "=" in key or "\x00" in key:
                raise ValueError(f"invalid variable name {key!r}")
            if "\x00" in value:
                raise ValueError(f"value of {key!r} must not contain NUL characters")
        return v


class CommandOutput(BaseModel):
    stdout: str = Field(description="Standard output (UTF-8, invalid bytes replaced).")
    stderr: str = Field(description="Standard error (UTF-8, invalid bytes replaced).")
    exit_code: int = Field(description="The exit status; negative: killed by that signal.")
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    pid: int
    program: str = Field(description="The executable that ran (absolute path).")
    duration: float = Field(description="Seconds from spawn to exit.")


class CommandConfig(ExecutorConfig):
    allowed_commands: list[str] = Field(
        default_factory=list,
        description="Programs that may run (names or paths); empty: every program not blocked.",
    )
    blocked_commands: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKED),
        description="Programs that never run (names, globs such as `mkfs.*`, or paths).",
    )
    shell: bool = Field(default=False, description="Allow `shell: true` inputs and shells.")
    max_output_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Cap on each of stdout and stderr, in bytes."
    )
    default_timeout: float | None = Field(
        default=None, gt=0, description="Timeout for inputs that set none (seconds)."
    )
    kill_grace: float = Field(
        default=2.0, ge=0, description="Seconds between SIGTERM and SIGKILL to the group."
    )
    kill_leftovers: bool = Field(
        default=True,
        description="Kill what a program left running in its process group when it exits.",
    )
    threads: int = Field(
        default=64, ge=1, description="Most programs running at once (the rest wait)."
    )


# ---- program policy ---------------------------------------------------------------------
_BLOCKED = 1
_SHELL = 2
_WRAPPER = 4


class _Program:
    """A program file as found: the path to run, its identity (device, inode) and name."""

    __slots__ = ("ident", "name", "path")

    def __init__(self, path: str) -> None:
        st = os.stat(path)  # follows every symlink, also in parent directories
        if not stat.S_ISREG(st.st_mode):
            raise PermanentError(f"command {path!r} is not a regular file")
        self.path = path
        self.ident = (st.st_dev, st.st_ino)
        self.name = path.rpartition("/")[2]

    def real(self) -> str:
        return os.path.realpath(self.path)


def _locate(entry: str, every_copy: bool) -> list[str]:
    """The files a list entry names: a path, or a name on PATH (and in the system dirs)."""
    if "/" in entry:
        return [entry] if os.path.exists(entry) else []
    if not every_copy:
        found = shutil.which(entry)
        return [found] if found else []
    dirs = [*os.environ.get("PATH", "").split(os.pathsep), *_SYSTEM_DIRS]
    candidates = (os.path.join(d, entry) for d in dict.fromkeys(dirs) if d)
    return [c for c in candidates if os.path.isfile(c)]


class _Policy:
    """The config's lists, resolved once at startup into identities, paths and names.

    A program is matched by its file identity first (which sees through symlinks, ``..``
    and hard links), then by its path and name. Blocked names also match copies that keep
    the name; a renamed copy is only caught by ``allowed_commands``, the robust list.
    """

    def __init__(self, config: CommandConfig) -> None:
        self.config = config
        self.by_id: dict[tuple[int, int], int] = {}
        self.by_path: dict[str, int] = {}
        self.by_name: dict[str, int] = {}
        globs: list[str] = []
        for flag, entries in (
            (_BLOCKED, config.blocked_commands),
            (_SHELL, sorted(SHELLS)),
            (_WRAPPER, sorted(EXEC_WRAPPERS)),
        ):
            for entry in entries:
                if "/" not in entry:
                    if any(c in entry for c in "*?["):
                        globs.append(entry)
                        continue
                    self.by_name[entry] = self.by_name.get(entry, 0) | flag
                for path in _locate(entry, every_copy=True):
                    self._add(path, flag, self.by_id, self.by_path)
        self.glob_re = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
        self.allowed_ids: dict[tuple[int, int], int] = {}
        self.allowed_paths: dict[str, int] = {}
        for entry in config.allowed_commands:
            for path in _locate(entry, every_copy=False):
                self._add(path, 1, self.allowed_ids, self.allowed_paths)
        self.restricted = bool(config.allowed_commands)

    @staticmethod
    def _add(path: str, flag: int, ids: dict[tuple[int, int], int], paths: dict[str, int]) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        ids[(st.st_dev, st.st_ino)] = ids.get((st.st_dev, st.st_ino), 0) | flag
        for p in (os.path.abspath(path), os.path.realpath(path)):
            paths[p] = paths.get(p, 0) | flag

    def flags(self, program: _Program) -> int:
        flags = (
            self.by_id.get(program.ident, 0)
            | self.by_path.get(program.path, 0)
            | self.by_name.get(program.name, 0)
        )
        if self.glob_re is not None and self.glob_re.match(program.name):
            flags |= _BLOCKED
        return flags

    def check(self, shown: str, program: _Program, args: list[str]) -> None:
        """Refuse ``program`` (typed as ``shown``) if the lists say so (PermanentError)."""
        flags = self.flags(program)
        allowed = self.restricted and (
            program.ident in self.allowed_ids or program.path in self.allowed_paths
        )
        if not flags and allowed == self.restricted:
            return  # the common case: an ordinary program, nothing more to check
        real = program.real()
        what = f"command {shown!r}" + (f" (resolved to {real})" if real != shown else "")
        if flags & _BLOCKED:
            raise PermanentError(
                f"{what} is blocked by the command executor's blocked_commands",
                details={"reason": "blocked", "program": real},
            )
        if self.restricted and not allowed:
            raise PermanentError(
                f"{what} is not in the command executor's allowed_commands",
                details={"reason": "not_allowed", "program": real},
            )
        if flags & _SHELL:
            if not (self.config.shell or allowed):
                raise PermanentError(
                    f"{what} is a shell; shells are refused unless the command executor's "
                    "config sets `shell: true`",
                    details={"reason": "shell", "program": real},
                )
            self.check_words(what, args, shell_words=True)
        elif flags & _WRAPPER:
            if not allowed:
                raise PermanentError(
                    f"{what} runs other programs, which would bypass the block list; it is "
                    "refused unless listed in allowed_commands",
                    details={"reason": "wrapper", "program": real},
                )
            self.check_words(what, args, shell_words=False)

    def check_words(self, what: str, words: Iterable[str], *, shell_words: bool) -> None:
        """Refuse when any word (of a shell line, or an argument) names a blocked program."""
        for word in words:
            for part in _split(word) if shell_words else [word]:
                if not part or part.startswith("-") or "=" in part:
                    continue
                found = part if "/" in part else shutil.which(part)
                if found is None:
                    continue
                try:
                    program = _Program(os.path.abspath(found))
                except (OSError, PermanentError):
                    continue
                if self.flags(program) & _BLOCKED:
                    raise PermanentError(
                        f"{what}: its arguments would run the blocked program {part!r} "
                        f"({program.real()})",
                        details={"reason": "blocked", "program": program.real()},
                    )


def _hint(command: str) -> str:
    if any(c.isspace() for c in command):
        return "; `command` is one program: put its arguments in `args` (no shell is involved)"
    return ""


def _split(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: the shell will refuse it; check the raw words
        return line.split()


# ---- the spawning threads ------------------------------------------------------------
class _Job:
    """One program run, shared by the event loop (cancel) and a spawning thread (everything else)."""

    __slots__ = (
        "argv",
        "cancelled",
        "cap",
        "channel",
        "cwd",
        "deadline",
        "env",
        "executable",
        "future",
        "grace",
        "kill_leftovers",
        "lock",
        "loop",
        "outcome",
        "stdin",
        "wake_fd",
    )

    def __init__(
        self,
        argv: list[str],
        executable: str,
        env: dict[str, str] | None,
        cwd: str | None,
        stdin: bytes | None,
        deadline: float | None,
        cap: int,
        grace: float,
        kill_leftovers: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.argv = argv
        self.executable = executable
        self.env = env
        self.cwd = cwd
        self.stdin = stdin
        self.deadline = deadline
        self.cap = cap
        self.grace = grace
        self.kill_leftovers = kill_leftovers
        self.loop = loop
        self.channel: _Completions | None = None  # set by _Spawner.submit
        self.future: asyncio.Future[None] = loop.create_future()
        self.outcome: tuple[Any, ...] | None = None
        self.cancelled = False
        self.wake_fd: int | None = None
        self.lock = threading.Lock()

    def cancel(self) -> None:
        """Ask the thread running this job to kill the process group (thread-safe)."""
        with self.lock:
            self.cancelled = True
            if self.wake_fd is not None:
                try:
                    os.write(self.wake_fd, b"x")
                except BlockingIOError:  # the pipe is full of wake-ups already
                    pass

    def complete(self, outcome: tuple[Any, ...]) -> None:
        """Runs on the event loop: hand the outcome to whoever awaits ``future``."""
        self.outcome = outcome
        if not self.future.done():
            self.future.set_result(None)


class _Completions:
    """Finished jobs of one event loop: a queue plus one eventfd (or pipe) the loop watches.

    Cheaper than ``call_soon_threadsafe`` per job (measured in ``benchmarks/core.py``: about
    25 us less CPU and 4% more spawns per second): no handle, no socket send/recv pair, and
    one wake-up completes every job finished by then."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done: queue.SimpleQueue[tuple[_Job, tuple[Any, ...]]] = queue.SimpleQueue()
        self.lock = threading.Lock()  # guards `closed` against a post racing close()
        self.closed = False
        if _HAS_EVENTFD:
            self.read_fd = self.write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self.read_fd, self.write_fd = os.pipe()
            os.set_blocking(self.read_fd, False)
            os.set_blocking(self.write_fd, False)
        try:
            loop.add_reader(self.read_fd, self._ready)
        except BaseException:
            self._close_fds()
            raise

    def post(self, job: _Job, outcome: tuple[Any, ...]) -> bool:
        """From a spawning thread: queue ``job`` for its loop; False if this channel is closed."""
        with self.lock:
            if self.closed:
                return False
            self.done.put((job, outcome))
            try:
                os.write(self.write_fd, _ONE)
            except BlockingIOError:  # pipe fallback full of wake-ups: the loop is due anyway
                pass
            return True

    def _ready(self) -> None:
        """On the loop: reset the wake-up, then complete every finished job."""
        try:
            if _HAS_EVENTFD:
                os.read(self.read_fd, 8)  # resets the counter
            else:
                while os.read(self.read_fd, 4096):
                    pass
        except BlockingIOError:
            pass
        done = self.done
        while True:
            try:
                job, outcome = done.get_nowait()
            except queue.Empty:
                return
            job.complete(outcome)

    def close(self) -> None:
        """Stop taking jobs; unregister from the loop (on its thread) and close the fds."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        loop = self.loop
        if loop.is_closed():
            self._close_fds()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            self._unregister()
        else:
            try:
                loop.call_soon_threadsafe(self._unregister)
            except RuntimeError:  # closed meanwhile: nothing watches the fd any more
                self._close_fds()

    def _unregister(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self.read_fd)
        self._ready()  # jobs posted just before close still hear back
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in {self.read_fd, self.write_fd}:
            try:
                os.close(fd)
            except OSError:
                pass


class _Spawner:
    """A lazily grown pool of threads that run jobs (like ThreadPoolExecutor, minus the futures)."""

    def __init__(self, max_threads: int) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a job, or about to (guarded by _lock)
        self._max = max_threads
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._channels: dict[asyncio.AbstractEventLoop, _Completions] = {}
        self._channel: _Completions | None = None  # the last one used (usually the only one)

    def _channel_for(self, loop: asyncio.AbstractEventLoop) -> _Completions | None:
        channel = self._channel
        if channel is not None and channel.loop is loop:
            return channel
        with self._lock:
            channel = self._channels.get(loop)
            if channel is None:
                for old in [c for c in self._channels.values() if c.loop.is_closed()]:
                    old.close()  # loops that ended without a shutdown: free their fds
                    del self._channels[old.loop]
                try:
                    channel = _Completions(loop)
                except (NotImplementedError, OSError):  # no add_reader: call_soon_threadsafe
                    return None
                self._channels[loop] = channel
            self._channel = channel
        return channel

    def submit(self, job: _Job) -> None:
        job.channel = self._channel_for(job.loop)
        self._queue.put(job)
        with self._lock:
            if self._idle:
                self._idle -= 1
                return
            if len(self._threads) < self._max:
                t = threading.Thread(target=self._work, name="workplex-command", daemon=True)
                self._threads.append(t)
                t.start()

    def close(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._queue.put(None)
            self._threads.clear()
            channels = list(self._channels.values())
            self._channels.clear()
            self._channel = None
        for channel in channels:
            channel.close()

    def _work(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                try:
                    outcome = _run(job, wake_r, wake_w)
                except BaseException as exc:  # the loop side must always hear back
                    outcome = ("error", exc)
                # Count as idle before the loop hears back, or its next submit would find no
                # idle thread and start another one.
                with self._lock:
                    self._idle += 1
                channel = job.channel
                if channel is None or not channel.post(job, outcome):
                    try:
                        job.loop.call_soon_threadsafe(job.complete, outcome)
                    except RuntimeError:  # the loop is closed; nobody is waiting
                        pass
                del channel
                del job
        finally:
            os.close(wake_r)
            os.close(wake_w)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Capture:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    __slots__ = ("cap", "chunks", "kept", "total")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.kept = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - self.kept
        if room > 0:
            piece = data if len(data) <= room else data[:room]
            self.chunks.append(piece)
            self.kept += len(piece)

    def text(self) -> tuple[str, bool]:
        text = b"".join(self.chunks).decode("utf-8", "replace")
        if self.total > self.kept:
            text += f"\n[... truncated: {self.total - self.kept} more bytes]"
            return text, True
        return text, False


class _Child:
    """A spawned program: its pid, and reaping through ``subprocess`` (which owns the pid)."""

    __slots__ = ("pid", "popen", "returncode")

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.pid = popen.pid
        self.popen = popen
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.popen.poll()
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = self.popen.wait()
        return self.returncode


def _spawn(job: _Job, stdin: int, stdout: int, stderr: int) -> _Child:
    """Start the program in a new session (and so a new process group).

    ``subprocess`` releases the GIL while it forks and execs; ``os.posix_spawn`` does not,
    which serialises concurrent spawns, so subprocess is the faster choice here."""
    popen = subprocess.Popen(
        job.argv,
        executable=job.executable,
        stdin=stdin if stdin >= 0 else _devnull(),
        stdout=stdout,
        stderr=stderr,
        cwd=job.cwd,
        env=job.env,
        start_new_session=True,
    )
    return _Child(popen)


def _run(job: _Job, wake_r: int, wake_w: int) -> tuple[Any, ...]:
    """Spawn, feed, read, wait; on deadline or cancel kill the group. Runs on a thread."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r = in_w = -1
    if job.stdin:
        in_r, in_w = os.pipe()
    pidfd = -1
    child: _Child | None = None
    try:
        with job.lock:
            if job.cancelled:
                return ("cancelled",)
            job.wake_fd = wake_w
            start = time.monotonic()
            child = _spawn(job, in_r, out_w, err_w)
        os.close(out_w)
        os.close(err_w)
        out_w = err_w = -1
        if in_r >= 0:
            os.close(in_r)
            in_r = -1
            os.set_blocking(in_w, False)
        if _HAS_PIDFD:
            try:
                pidfd = os.pidfd_open(child.pid)
            except OSError:
                pidfd = -1
        stdin_fd = [in_w]  # _supervise closes it when all is written (EOF for the program)
        in_w = -1
        try:
            return _supervise(job, child, pidfd, out_r, err_r, stdin_fd, wake_r, start)
        finally:
            in_w = stdin_fd[0]
    except OSError as exc:
        return ("spawn_error", exc)
    finally:
        with job.lock:
            job.wake_fd = None
        if job.cancelled:  # a wake-up may still sit in the pipe: not for the next job
            _drain(wake_r)
        if child is not None and child.returncode is None:  # an unexpected error: no orphans
            _killpg(child.pid, signal.SIGKILL)
            child.wait()
        for fd in (out_r, out_w, err_r, err_w, in_r, in_w, pidfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _supervise(
    job: _Job,
    proc: _Child,
    pidfd: int,
    out_r: int,
    err_r: int,
    stdin_fd: list[int],
    wake_r: int,
    start: float,
) -> tuple[Any, ...]:
    out = _Capture(job.cap)
    err = _Capture(job.cap)
    captures = {out_r: out, err_r: err}
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(err_r, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    stdin = memoryview(job.stdin) if job.stdin else None
    in_w = stdin_fd[0]
    if in_w >= 0:
        poller.register(in_w, select.POLLOUT)
    open_pipes = 2
    exited = False
    reason = ""  # why the group is being killed: "timeout" or "cancelled"
    leftover_deadline: float | None = None  # the leader exited but its pipes stay open
    deadline = job.deadline
    while open_pipes or not exited:
        if pidfd < 0 and not exited and proc.poll() is not None:
            exited = True
        now = time.monotonic()
        wait_until = deadline
        if leftover_deadline is not None:
            wait_until = (
                leftover_deadline if wait_until is None else min(wait_until, leftover_deadline)
            )
        if pidfd < 0 and not exited:  # no pidfd: look at the process now and then
            wait_until = now + 0.05 if wait_until is None else min(wait_until, now + 0.05)
        if wait_until is not None and now >= wait_until:
            if deadline is not None and now >= deadline:
                reason = "timeout"
                break
            if leftover_deadline is not None:
                break  # leftovers outlived the grace: give up on their pipes
            continue
        timeout_ms = None if wait_until is None else max(1, int((wait_until - now) * 1000) + 1)
        for fd, _ev in poller.poll(timeout_ms):
            if fd in (out_r, err_r):
                data = os.read(fd, _CHUNK)
                if data:
                    captures[fd].add(data)
                else:
                    poller.unregister(fd)
                    open_pipes -= 1
            elif fd == pidfd:
                poller.unregister(fd)
                exited = True
            elif fd == wake_r:
                _drain(wake_r)
                if job.cancelled:
                    reason = "cancelled"
            elif fd == in_w and stdin is not None:
                try:
                    n = os.write(in_w, stdin[:_CHUNK])
                except BlockingIOError:
                    n = 0
                except OSError:  # the program closed its stdin (EPIPE): it does not want more
                    stdin = stdin[len(stdin) :]
                    n = 0
                stdin = stdin[n:]
                if not stdin:
                    poller.unregister(in_w)
                    stdin_fd[0] = -1
                    os.close(in_w)
                    in_w = -1
                    stdin = None
        if reason:
            break
        if exited and open_pipes and leftover_deadline is None:
            # The program is gone but something it started holds its output open.
            if not job.kill_leftovers:
                continue
            _killpg(proc.pid, signal.SIGTERM)
            leftover_deadline = time.monotonic() + job.grace
    if reason:
        _terminate_group(proc, pidfd, job.grace)
    elif job.kill_leftovers:
        # The leader is a zombie until reaped, so its group id cannot be reused yet.
        _killpg(proc.pid, signal.SIGKILL)
    rc = proc.wait()
    duration = time.monotonic() - start
    stdout, out_trunc = out.text()
    stderr, err_trunc = err.text()
    if reason:
        return (reason, stdout, stderr, proc.pid, duration)
    return ("ok", rc, stdout, stderr, out_trunc, err_trunc, proc.pid, duration)


def _terminate_group(proc: _Child, pidfd: int, grace: float) -> None:
    """SIGTERM the whole group, give the leader ``grace`` seconds, then SIGKILL the group."""
    pgid = proc.pid
    _killpg(pgid, signal.SIGTERM)
    if grace > 0:
        if pidfd >= 0:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll(int(grace * 1000))
        else:
            end = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < end:
                time.sleep(0.01)
    # Unconditionally: members that ignored SIGTERM or outlived the leader go too. The
    # leader is not reaped yet, so the group id still belongs to this group.
    _killpg(pgid, signal.SIGKILL)


# ---- the executor -----------------------------------------------------------------------
class Command(Executor):
    name = "command"
    description = "Runs a program (argv, env, cwd, stdin, timeout, output caps, allow/block lists)."
    security = SecurityLevel.PRIVILEGED
    capabilities = Capabilities(subprocess=True, filesystem=True)

    Input = CommandInput
    Output = CommandOutput
    Config = CommandConfig

    def __init__(self) -> None:
        super().__init__()
        self.config: CommandConfig = CommandConfig()
        self._policy: _Policy | None = None
        self._spawner: _Spawner | None = None
        self._which: dict[tuple[str, str], str] = {}

    async def startup(self, config: Any) -> None:
        await super().startup(config)
        self._policy = _Policy(self.config)
        self._spawner = _Spawner(self.config.threads)

    async def shutdown(self) -> None:
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None

    def exit_code(self, output: Any) -> int | None:
        return output.exit_code if isinstance(output, CommandOutput) else None

    def _find(self, command: str, search_path: str) -> str:
        """The absolute path ``command`` runs from PATH (cached; the caller re-checks the file)."""
        key = (command, search_path)
        found = self._which.get(key)
        if found is None:
            found = shutil.which(command, path=search_path)
            if found is None:
                raise PermanentError(f"command {command!r} not found on PATH{_hint(command)}")
            found = os.path.abspath(found)
            if len(self._which) >= 1024:
                self._which.clear()
            self._which[key] = found
        return found

    def _program(self, command: str, path: str, search_path: str | None) -> _Program:
        try:
            program = _Program(path)
        except FileNotFoundError:
            if search_path is None:
                raise PermanentError(
                    f"command {command!r}: no such file ({path}){_hint(command)}"
                ) from None
            self._which.pop((command, search_path), None)  # moved or removed: look again
            try:
                program = _Program(self._find(command, search_path))
            except FileNotFoundError:
                raise PermanentError(
                    f"command {command!r} not found on PATH{_hint(command)}"
                ) from None
        except OSError as exc:
            raise PermanentError(f"command {command!r} ({path}): {exc.strerror}") from exc
        return program  # not executable: the spawn says so (EACCES), no extra syscall here

    def _prepare(
        self, input: CommandInput
    ) -> tuple[list[str], str, dict[str, str] | None, str | None, str]:
        """argv, executable, env, cwd, real program path, after the policy checks (PermanentError if refused)."""
        policy = self._policy
        if policy is None:  # used without startup(): the defaults
            policy = self._policy = _Policy(self.config)
        if input.env or input.clear_env:
            env: dict[str, str] | None = {} if input.clear_env else dict(os.environ)
            assert env is not None
            env.update(input.env)
        else:
            env = None  # inherit: the cheapest spawn
        cwd = input.working_dir
        if cwd is not None and not os.path.isdir(cwd):
            raise PermanentError(f"working_dir {cwd!r} is not an existing directory")
        if input.shell:
            if not self.config.shell:
                raise PermanentError(
                    "shell: true is refused: the command executor's config does not allow "
                    "`shell` (set `shell: true` under executors.command to allow it)",
                    details={"reason": "shell"},
                )
            shell = self._program(SHELL_PATH, SHELL_PATH, None)
            policy.check(SHELL_PATH, shell, [])
            policy.check_words(
                f"shell command {input.command!r}", [input.command], shell_words=True
            )
            argv = [SHELL_PATH, "-c", input.command, "sh", *input.args]
            return argv, SHELL_PATH, env, cwd, shell.path
        command = input.command
        if command[0] == "/":
            program = self._program(command, command, None)
        elif "/" in command:
            # Relative to the working directory, as the kernel would resolve it ("..": physically).
            base = os.getcwd() if cwd is None else os.path.join(os.getcwd(), cwd)
            program = self._program(command, os.path.join(base, command), None)
        else:
            search_path = (env if env is not None else os.environ).get("PATH", os.defpath)
            program = self._program(command, self._find(command, search_path), search_path)
        policy.check(command, program, input.args)
        # Run the file that was checked (not a fresh PATH lookup), with argv[0] as typed.
        return [command, *input.args], program.path, env, cwd, program.path

    async def execute(self, input: CommandInput, ctx: Context) -> CommandOutput:
        argv, executable, env, cwd, real = self._prepare(input)
        timeout = input.timeout if input.timeout is not None else self.config.default_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if ctx.deadline is not None and (deadline is None or ctx.deadline < deadline):
            deadline = ctx.deadline
        spawner = self._spawner
        if spawner is None:
            spawner = self._spawner = _Spawner(self.config.threads)
        loop = asyncio.get_running_loop()
        job = _Job(
            argv,
            executable,
            env,
            cwd,
            input.stdin.encode() if input.stdin else None,
            deadline,
            self.config.max_output_bytes,
            self.config.kill_grace,
            self.config.kill_leftovers,
            loop,
        )
        spawner.submit(job)
        try:
            await job.future
        except asyncio.CancelledError:
            job.cancel()
            # Wait for the thread to kill and reap the group; a second cancel must not
            # leave the process behind, so keep waiting and re-raise at the end.
            while job.outcome is None:
                job.future = loop.create_future()
                try:
                    await job.future
                except asyncio.CancelledError:
                    job.cancel()
            raise
        return self._result(input, real, job.outcome, timeout)

    def _result(
        self, input: CommandInput, program: str, outcome: Any, timeout: float | None
    ) -> CommandOutput:
        kind = outcome[0]
        if kind == "ok":
            _, rc, stdout, stderr, out_trunc, err_trunc, pid, duration = outcome
            return CommandOutput(
                stdout=stdout,
                stderr=stderr,
                exit_code=rc,
                stdout_truncated=out_trunc,
                stderr_truncated=err_trunc,
                pid=pid,
                program=program,
                duration=duration,
            )
        if kind == "timeout":
            _, stdout, stderr, pid, duration = outcome
            limit = f"{timeout:g}s" if timeout is not None else "the task's deadline"
            raise TaskTimeoutError(
                f"command {input.command!r} ran past {limit}; its process group was killed",
                details={"pid": pid, "stdout": stdout, "stderr": stderr, "duration": duration},
            )
        if kind == "spawn_error":
            exc = outcome[1]
            raise PermanentError(
                f"cannot run command {input.command!r} ({program}): {exc.strerror or exc}"
            ) from exc
        if kind == "error":
            raise outcome[1]
        raise PermanentError(f"command {input.command!r} was cancelled before it started")


__all__ = ["Command", "CommandConfig", "CommandInput", "CommandOutput"]
