"""``file``: read, write, append, list, stat and delete files under a configured root.

Containment: a path is relative to the root. Absolute paths are refused; the path is
resolved with every symlink and ``..`` followed (``os.path.realpath``) and refused if it
lands outside the root. The resolved path is then walked again from an open handle on the
root, one directory at a time with ``O_NOFOLLOW``, and the final operation uses that
directory handle and ``O_NOFOLLOW`` too, so a symlink swapped in after the check makes the
operation fail instead of escaping. Symlinks that stay inside the root work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import errno
import os
import shutil
import stat as stat_mod
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workplex.errors import PermanentError
from workplex.executor import Capabilities, Context, Executor, ExecutorConfig, SecurityLevel

Operation = Literal["read", "write", "append", "list", "stat", "delete"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FileInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: Operation
    path: str = Field(
        default=".", description="Relative to the executor's root; `.` is the root itself."
    )
    content: str | None = Field(default=None, description="What `write` and `append` store.")
    encoding: str = Field(
        default="utf-8",
        description="Text encoding of `content` (any Python codec), or `base64` for bytes.",
    )
    make_dirs: bool = Field(
        default=False, description="`write`/`append`: create missing parent directories."
    )
    recursive: bool = Field(default=False, description="`delete`: remove a directory tree.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty (use '.' for the root)")
        if "\x00" in v:
            raise ValueError("must not contain NUL characters")
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        if v.lower() == "base64":
            return "base64"
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r} (use a Python codec or 'base64')") from None
        return v

    @model_validator(mode="after")
    def _content(self) -> FileInput:
        if self.operation in ("write", "append") and self.content is None:
            raise ValueError(f"`content` is required for operation {self.operation!r}")
        return self


class FileEntry(BaseModel):
    name: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int


class FileStat(BaseModel):
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    mode: str = Field(description="Permission bits in octal, e.g. '0o644'.")
    modified: float = Field(description="Last modification, epoch seconds.")


class FileOutput(BaseModel):
    operation: Operation
    path: str = Field(description="The path relative to the root, normalised.")
    content: str | None = None
    encoding: str | None = None
    size: int | None = Field(default=None, description="Bytes read or written.")
    entries: list[FileEntry] | None = None
    stat: FileStat | None = None
    deleted: bool | None = None


class FileConfig(ExecutorConfig):
    root: str = Field(
        default="./data",
        description="Directory every path is under (relative: to the working directory). "
        "Created when first needed.",
    )
    max_read_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="Largest file `read` returns."
    )
    max_write_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="Largest `content` accepted."
    )
    read_only: bool = Field(default=False, description="Refuse write, append and delete.")


def _kind(mode: int) -> Literal["file", "directory", "symlink", "other"]:
    if stat_mod.S_ISREG(mode):
        return "file"
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "other"


class File(Executor):
    name = "file"
    description = "Reads, writes, appends, lists, stats and deletes files under a configured root."
    security = SecurityLevel.TRUSTED
    capabilities = Capabilities(filesystem=True)

    Input = FileInput
    Output = FileOutput
    Config = FileConfig

    def __init__(self) -> None:
        super().__init__()
        self.config: FileConfig = FileConfig()
        self._root: str | None = None

    @property
    def root(self) -> str:
        """The root's real absolute path (created on first use)."""
        if self._root is None:
            root = Path(self.config.root).expanduser()
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PermanentError(
                    f"file executor root {str(root)!r} cannot be created: {exc.strerror}"
                ) from exc
            self._root = os.path.realpath(root)
        return self._root

    async def startup(self, config: Any) -> None:
        await super().startup(config)
        self._root = None

    async def health_check(self) -> bool:
        return self._root_usable()

    def _root_usable(self) -> bool:
        root = Path(self.config.root).expanduser()
        target = root if root.exists() else root.parent
        return os.access(target, os.R_OK if self.config.read_only else os.W_OK)

    async def execute(self, input: FileInput, ctx: Context) -> FileOutput:
        # Disk I/O blocks: run it on a thread so the event loop keeps going.
        return await asyncio.to_thread(self._execute, input)

    # ---- path handling ---------------------------------------------------------------
    def _resolve(self, raw: str, *, follow_last: bool = True, shown: str = "") -> list[str]:
        """The path's components below the root after resolving symlinks; refuse escapes.

        With ``follow_last=False`` a final symlink is kept as itself (``stat`` and ``delete``
        act on the link, never on what it points to)."""
        if not follow_last:
            head, tail = os.path.split(raw)
            if tail not in ("", ".", ".."):
                return [*self._resolve(head or ".", shown=raw), tail]
        shown = shown or raw
        if os.path.isabs(raw):
            raise PermanentError(
                f"path {shown!r} is absolute; give a path relative to the root {self.root}"
            )
        root = self.root
        full = os.path.realpath(os.path.join(root, raw))
        if full != root and not full.startswith(root + os.sep):
            raise PermanentError(
                f"path {shown!r} leaves the root {root} (it resolves to {full}); "
                "'..' and symlinks may not point outside the root"
            )
        rel = os.path.relpath(full, root)
        return [] if rel == "." else rel.split(os.sep)

    def _open_dir(self, raw: str, parts: list[str], *, create: bool = False) -> int:
        """An fd of the directory ``parts``, walked from the root without following symlinks."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise PermanentError(
                            f"path {raw!r}: directory {part!r} does not exist"
                        ) from None
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise PermanentError(
                            f"path {raw!r}: {part!r} is not a directory inside the root "
                            "(or was replaced by a symlink while resolving)"
                        ) from exc
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ---- operations --------------------------------------------------------------------
    def _execute(self, input: FileInput) -> FileOutput:
        raw = input.path
        op = input.operation
        parts = self._resolve(raw, follow_last=op not in ("stat", "delete"))
        rel = "/".join(parts) or "."
        if op in ("write", "append", "delete") and self.config.read_only:
            raise PermanentError(f"path {raw!r}: {op} refused, the file executor is read_only")
        try:
            if op == "list":
                return self._list(raw, parts, rel)
            if not parts:
                if op == "stat":
                    fd = os.open(self.root, _DIR_FLAGS)
                    try:
                        return FileOutput(operation=op, path=rel, stat=self._stat(os.fstat(fd)))
                    finally:
                        os.close(fd)
                raise PermanentError(f"path {raw!r} is the root itself; {op} needs a file path")
            create = op in ("write", "append") and input.make_dirs
            dir_fd = self._open_dir(raw, parts[:-1], create=create)
            try:
                name = parts[-1]
                if op == "read":
                    return self._read(raw, rel, dir_fd, name, input.encoding)
                if op in ("write", "append"):
                    assert input.content is not None  # the model checked it
                    return self._write(raw, rel, dir_fd, name, input, op == "append")
                if op == "stat":
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    return FileOutput(operation=op, path=rel, stat=self._stat(st))
                return self._delete(raw, rel, dir_fd, name, input.recursive)
            finally:
                os.close(dir_fd)
        except PermanentError:
            raise
        except FileNotFoundError as exc:
            raise PermanentError(f"path {raw!r}: no such file or directory") from exc
        except IsADirectoryError as exc:
            raise PermanentError(f"path {raw!r} is a directory") from exc
        except NotADirectoryError as exc:
            raise PermanentError(f"path {raw!r}: a component is not a directory") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PermanentError(
                    f"path {raw!r} is a symlink (it was replaced while resolving); refused"
                ) from exc
            raise PermanentError(f"path {raw!r}: {exc.strerror or exc}") from exc

    @staticmethod
    def _stat(st: os.stat_result) -> FileStat:
        return FileStat(
            type=_kind(st.st_mode),
            size=st.st_size,
            mode=oct(stat_mod.S_IMODE(st.st_mode)),
            modified=st.st_mtime,
        )

    def _list(self, raw: str, parts: list[str], rel: str) -> FileOutput:
        fd = self._open_dir(raw, parts)
        entries = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    entries.append(
                        FileEntry(name=entry.name, type=_kind(st.st_mode), size=st.st_size)
                    )
        finally:
            os.close(fd)
        entries.sort(key=lambda e: e.name)
        return FileOutput(operation="list", path=rel, entries=entries)

    def _read(self, raw: str, rel: str, dir_fd: int, name: str, encoding: str) -> FileOutput:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise PermanentError(f"path {raw!r} is a directory; use operation 'list'")
            if not stat_mod.S_ISREG(st.st_mode):
                raise PermanentError(f"path {raw!r} is not a regular file")
            limit = self.config.max_read_bytes
            if st.st_size > limit:
                raise PermanentError(
                    f"path {raw!r} is {st.st_size} bytes, above max_read_bytes ({limit})"
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:  # grew after the check
            raise PermanentError(f"path {raw!r} is above max_read_bytes ({limit})")
        if encoding == "base64":
            text = base64.b64encode(data).decode("ascii")
        else:
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise PermanentError(
                    f"path {raw!r} is not valid {encoding} text (at byte {exc.start}); "
                    "read it with encoding 'base64'"
                ) from exc
        return FileOutput(
            operation="read", path=rel, content=text, encoding=encoding, size=len(data)
        )

    def _write(
        self, raw: str, rel: str, dir_fd: int, name: str, input: FileInput, append: bool
    ) -> FileOutput:
        assert input.content is not None
        if input.encoding == "base64":
            try:
                data = base64.b64decode(input.content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise PermanentError(f"content: not valid base64 ({exc})") from exc
        else:
            try:
                data = input.content.encode(input.encoding)
            except UnicodeEncodeError as exc:
                raise PermanentError(
                    f"content: cannot be encoded as {input.encoding}: {exc}"
                ) from exc
        if len(data) > self.config.max_write_bytes:
            raise PermanentError(
                f"content: {len(data)} bytes, above max_write_bytes ({self.config.max_write_bytes})"
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        flags |= os.O_APPEND if append else os.O_TRUNC
        fd = os.open(name, flags, 0o666, dir_fd=dir_fd)
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise PermanentError(f"path {raw!r} is not a regular file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        op: Operation = "append" if append else "write"
        return FileOutput(operation=op, path=rel, size=len(data))

    def _delete(self, raw: str, rel: str, dir_fd: int, name: str, recursive: bool) -> FileOutput:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat_mod.S_ISDIR(st.st_mode):
            if recursive:
                # rmtree with dir_fd never follows symlinks out of the tree.
                shutil.rmtree(name, dir_fd=dir_fd)
            else:
                try:
                    os.rmdir(name, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno == errno.ENOTEMPTY:
                        raise PermanentError(
                            f"path {raw!r} is a directory that is not empty; set recursive: true"
                        ) from exc
                    raise
        else:
            os.unlink(name, dir_fd=dir_fd)
        return FileOutput(operation="delete", path=rel, deleted=True)


__all__ = ["File", "FileConfig", "FileEntry", "FileInput", "FileOutput", "FileStat"]
