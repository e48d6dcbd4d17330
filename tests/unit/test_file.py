"""The ``file`` executor on real files: every operation, and escape attempts refused."""

# Tests inspect real files right after each await; blocking there is the point.
# ruff: noqa: ASYNC240

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from workplex import Registry, Result, Task
from workplex.config import parse_config
from workplex.errors import ValidationError
from workplex.executors.file import File


def make_registry(root: Path, **settings: Any) -> Registry:
    registry = Registry(
        parse_config({"executors": {"file": {"root": str(root), **settings}}}), discover=False
    )
    registry.register(File)
    return registry


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("secret")
    return path


@pytest.fixture
async def registry(root: Path) -> AsyncIterator[Registry]:
    async with make_registry(root) as reg:
        yield reg


async def run(registry: Registry, **payload: Any) -> Result:
    return await registry.execute(Task("file", payload))


def refused(result: Result, *words: str) -> bool:
    return (
        not result.success
        and result.error is not None
        and result.error.type == "PermanentError"
        and all(w in result.error.message for w in words)
    )


async def test_root_is_created_on_demand(registry: Registry, root: Path) -> None:
    assert not root.exists()
    result = await run(registry, operation="list")
    assert result.success and result.output["entries"] == []
    assert root.is_dir()


async def test_write_read_append_stat_list_delete(registry: Registry, root: Path) -> None:
    result = await run(
        registry, operation="write", path="a/b/note.txt", content="héllo", make_dirs=True
    )
    assert result.success, result.error
    assert result.output["size"] == len("héllo".encode())
    assert (root / "a/b/note.txt").read_text() == "héllo"

    await run(registry, operation="append", path="a/b/note.txt", content=" world")
    result = await run(registry, operation="read", path="a/b/note.txt")
    assert result.output["content"] == "héllo world"
    assert result.output["path"] == "a/b/note.txt"

    result = await run(registry, operation="write", path="a/b/note.txt", content="new")
    assert (root / "a/b/note.txt").read_text() == "new"  # write truncates

    result = await run(registry, operation="stat", path="a/b/note.txt")
    assert result.output["stat"]["type"] == "file"
    assert result.output["stat"]["size"] == 3

    (root / "a/z.bin").write_bytes(b"12345")
    result = await run(registry, operation="list", path="a")
    assert result.output["entries"] == [
        {"name": "b", "type": "directory", "size": (root / "a/b").stat().st_size},
        {"name": "z.bin", "type": "file", "size": 5},
    ]

    result = await run(registry, operation="delete", path="a/b")
    assert refused(result, "not empty", "recursive")
    result = await run(registry, operation="delete", path="a/b/note.txt")
    assert result.output["deleted"] is True
    assert not (root / "a/b/note.txt").exists()
    result = await run(registry, operation="delete", path="a", recursive=True)
    assert result.success and not (root / "a").exists()


async def test_binary_content_as_base64(registry: Registry, root: Path) -> None:
    blob = bytes(range(256))
    result = await run(
        registry,
        operation="write",
        path="blob",
        content=base64.b64encode(blob).decode(),
        encoding="base64",
    )
    assert result.success and (root / "blob").read_bytes() == blob
    result = await run(registry, operation="read", path="blob")
    assert refused(result, "'blob'", "not valid utf-8", "base64")
    result = await run(registry, operation="read", path="blob", encoding="base64")
    assert base64.b64decode(result.output["content"]) == blob
    result = await run(registry, operation="write", path="x", content="%%%", encoding="base64")
    assert refused(result, "content", "base64")


async def test_missing_files_and_wrong_kinds(registry: Registry, root: Path) -> None:
    root.mkdir()
    (root / "d").mkdir()
    assert refused(await run(registry, operation="read", path="nope.txt"), "'nope.txt'", "no such")
    assert refused(await run(registry, operation="read", path="d"), "'d'", "directory")
    assert refused(await run(registry, operation="delete", path="gone"), "'gone'")
    result = await run(registry, operation="write", path="no/dir/x.txt", content="x")
    assert refused(result, "'no/dir/x.txt'", "does not exist")
    assert refused(await run(registry, operation="delete", path="."), "root itself")


async def test_read_limit(root: Path) -> None:
    async with make_registry(root, max_read_bytes=10, max_write_bytes=20) as reg:
        await run(reg, operation="write", path="big", content="x" * 11)
        assert refused(await run(reg, operation="read", path="big"), "'big'", "max_read_bytes")
        assert refused(
            await run(reg, operation="write", path="w", content="y" * 21), "max_write_bytes"
        )


async def test_read_only(root: Path) -> None:
    async with make_registry(root, read_only=True) as reg:
        for op in ("write", "append", "delete"):
            result = await run(reg, operation=op, path="f", content="x")
            assert refused(result, "read_only"), op
        assert (await run(reg, operation="list")).success


# ---- escapes ----------------------------------------------------------------------------
async def test_dotdot_and_absolute_paths_are_refused(
    registry: Registry, root: Path, outside: Path
) -> None:
    rel_secret = os.path.relpath(outside / "secret.txt", root)
    for path in ("../outside/secret.txt", rel_secret, "a/../../outside/secret.txt", "..", "./.."):
        result = await run(registry, operation="read", path=path)
        assert refused(result, repr(path), "leaves the root"), (path, result.to_dict())
    for path in (str(outside / "secret.txt"), "/etc/passwd"):
        result = await run(registry, operation="read", path=path)
        assert refused(result, "absolute"), path
    result = await run(registry, operation="write", path="../outside/new.txt", content="x")
    assert refused(result, "leaves the root")
    assert not (outside / "new.txt").exists()
    result = await run(registry, operation="delete", path="../outside/secret.txt")
    assert refused(result, "leaves the root")
    assert (outside / "secret.txt").read_text() == "secret"
    # `..` that stays inside is fine
    await run(registry, operation="write", path="in.txt", content="ok")
    assert (await run(registry, operation="read", path="sub/../in.txt")).output["content"] == "ok"


async def test_symlinks_cannot_leave_the_root(
    registry: Registry, root: Path, outside: Path
) -> None:
    root.mkdir()
    (root / "file-link").symlink_to(outside / "secret.txt")
    (root / "dir-link").symlink_to(outside)
    (root / "inner").mkdir()
    (root / "inner" / "up").symlink_to("../../outside")  # relative, via ..
    attempts = [
        ("read", "file-link"),
        ("read", "dir-link/secret.txt"),
        ("read", "inner/up/secret.txt"),
        ("list", "dir-link"),
        ("write", "file-link"),
        ("append", "file-link"),
        ("write", "dir-link/new.txt"),
        ("stat", "dir-link/secret.txt"),
        ("delete", "dir-link/secret.txt"),
    ]
    for op, path in attempts:
        result = await run(registry, operation=op, path=path, content="pwned")
        assert refused(result, repr(path), "leaves the root"), (op, path, result.to_dict())
    assert (outside / "secret.txt").read_text() == "secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_symlinks_inside_the_root_work_and_delete_removes_the_link(
    registry: Registry, root: Path, outside: Path
) -> None:
    await run(registry, operation="write", path="real/data.txt", content="inside", make_dirs=True)
    (root / "alias").symlink_to("real")
    assert (await run(registry, operation="read", path="alias/data.txt")).output[
        "content"
    ] == "inside"
    # stat and delete act on a final symlink itself, even one pointing outside
    (root / "out-link").symlink_to(outside / "secret.txt")
    result = await run(registry, operation="stat", path="out-link")
    assert result.output["stat"]["type"] == "symlink"
    result = await run(registry, operation="delete", path="out-link")
    assert result.success and not (root / "out-link").is_symlink()
    assert (outside / "secret.txt").read_text() == "secret"


async def test_input_validation_names_the_field(registry: Registry) -> None:
    cases = [
        ({"operation": "move", "path": "x"}, "operation"),
        ({"operation": "write", "path": "x"}, "content"),
        ({"operation": "read", "path": "x", "encoding": "klingon"}, "encoding"),
        ({"operation": "read", "path": "a\x00b"}, "path"),
        ({"operation": "read", "path": ""}, "path"),
        ({"operation": "read", "paht": "x"}, "paht"),
    ]
    for payload, field in cases:
        with pytest.raises(ValidationError) as err:
            registry.validate(Task("file", payload))
        assert field in str(err.value), payload
