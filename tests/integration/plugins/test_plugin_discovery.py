"""Plugins found through real entry-point discovery: the example plugin is built and
installed with pip (offline) into a directory put on PYTHONPATH, then used through the
``workplex`` CLI in a subprocess. Broken plugins are refused naming their distribution."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import unavailable

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "plugin"

BROKEN = {
    "no-models": """
        from workplex import Context, Executor
        class Broken(Executor):
            name = "broken"
            async def execute(self, input, ctx: Context):
                return input
    """,
    "no-execute": """
        from pydantic import BaseModel
        from workplex import Executor
        class M(BaseModel):
            x: int
        class Broken(Executor):
            name = "broken"
            Input = M
            Output = M
    """,
    "not-an-executor": """
        class Broken:
            name = "broken"
            async def execute(self, input, ctx):
                return input
    """,
    "import-error": """
        import workplex_no_such_module_anywhere
        class Broken:
            pass
    """,
}
REASONS = {
    "no-models": "`Input` must be a pydantic BaseModel subclass",
    "no-execute": "does not implement `execute",
    "not-an-executor": "is not a subclass of workplex.Executor",
    "import-error": "failed to import",
}


def _write_broken(base: Path, kind: str) -> Path:
    project = base / f"src-{kind}"
    package = f"wpx_broken_{kind.replace('-', '_')}"
    (project / package).mkdir(parents=True)
    (project / package / "__init__.py").write_text(textwrap.dedent(BROKEN[kind]))
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "wpx-broken-{kind}"
            version = "0.0.1"

            [project.entry-points."workplex.executors"]
            broken = "{package}:Broken"

            [tool.setuptools]
            packages = ["{package}"]
            """
        )
    )
    return project


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each distribution built and installed (in parallel) into its own target directory."""
    base = tmp_path_factory.mktemp("plugins")
    example = base / "src-example"
    shutil.copytree(EXAMPLE, example)  # pip builds in place: keep the repository clean
    sources = {"example": example} | {k: _write_broken(base, k) for k in BROKEN}
    procs = {}
    for key, src in sources.items():
        target = base / f"site-{key}"
        cmd = [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--disable-pip-version-check",
            "--target", str(target), str(src),
        ]  # fmt: skip
        procs[key] = (
            target,
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        )
    targets = {}
    failures = []
    for key, (target, proc) in procs.items():
        out, _ = proc.communicate(timeout=100)
        if proc.returncode != 0:
            failures.append(f"{key}: {out.decode(errors='replace')[-2000:]}")
        targets[key] = target
    if failures:
        unavailable("cannot build plugin distributions offline: " + "\n".join(failures))
    return targets


def run_with(target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("WORKPLEX_CONFIG", None)
    return subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=target, timeout=60, check=False
    )


def workplex(target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_with(target, sys.executable, "-m", "workplex.cli", *args)


def test_example_plugin_is_discovered_with_its_distribution(installed: dict[str, Path]) -> None:
    proc = workplex(installed["example"], "executors", "--json")
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert infos["upper"]["distribution"] == "workplex-example-upper"
    assert infos["upper"]["security"] == "safe"
    assert infos["upper"]["input_schema"]["properties"]["text"]["type"] == "string"
    assert infos["echo"]["distribution"] == "workplex"  # built-ins come through the same door


def test_example_plugin_executes_through_the_cli(installed: dict[str, Path]) -> None:
    proc = workplex(installed["example"], "exec", "upper", "--input", '{"text": "hello"}', "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["output"] == {"text": "HELLO"}
    proc = workplex(installed["example"], "exec", "upper", "--input", '{"txt": "hello"}')
    assert proc.returncode == 2
    assert "text" in proc.stderr


def test_plugin_is_absent_without_its_distribution(
    installed: dict[str, Path], tmp_path: Path
) -> None:
    proc = workplex(tmp_path, "exec", "upper", "--input", '{"text": "x"}')
    assert proc.returncode == 2
    assert "unknown executor 'upper'" in proc.stderr


def test_registry_discovers_the_plugin_in_python(installed: dict[str, Path]) -> None:
    code = (
        "import asyncio\n"
        "from workplex import Registry, Task\n"
        "async def main():\n"
        "    async with Registry() as r:\n"
        "        res = await r.execute(Task('upper', {'text': 'abc'}))\n"
        "        print(r.info('upper').distribution, res.output['text'])\n"
        "asyncio.run(main())\n"
    )
    proc = run_with(installed["example"], sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["workplex-example-upper", "ABC"]


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_plugins_are_refused_naming_the_distribution(
    installed: dict[str, Path], kind: str
) -> None:
    # Refused (not registered), with the reason; the other executors keep working.
    code = (
        "from workplex import Registry\n"
        "from workplex.registry import PluginError\n"
        "r = Registry()\n"
        "print('echo' in r)\n"
        "for b in r.broken:\n"
        "    print(b.reason)\n"
        "try:\n"
        "    r.get('broken')\n"
        "except PluginError as exc:\n"
        "    print('refused:', exc)\n"
    )
    proc = run_with(installed[kind], sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "True"
    refused = [ln for ln in lines if ln.startswith("refused:")]
    assert refused and f"wpx-broken-{kind}" in refused[0] and REASONS[kind] in refused[0]
    assert any(f"wpx-broken-{kind}" in ln and REASONS[kind] in ln for ln in lines[1:])
    # The CLI warns once and goes on; using the broken one is bad input (exit 2).
    cli = workplex(installed[kind], "executors")
    assert cli.returncode == 0, cli.stderr
    assert "warning: " in cli.stderr and f"wpx-broken-{kind}" in cli.stderr
    used = workplex(installed[kind], "exec", "broken", "--input", "{}")
    assert used.returncode == 2
    assert f"wpx-broken-{kind}" in used.stderr and "Traceback" not in used.stderr
