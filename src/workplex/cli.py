"""The ``workplex`` command line.

Exit codes: 0 success, 1 the task or run failed, 2 bad input (unknown executor, invalid
JSON, payload not matching its schema, security level refused, bad pipeline or config).
Heavy modules are imported inside the commands so ``workplex --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from workplex.executor import Result
    from workplex.registry import Registry

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

app = typer.Typer(
    name="workplex",
    help="Run work through pluggable executors: single tasks, pipelines, durable runs, workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class State:
    """Options shared by every command (set by the top-level callback)."""

    config_path: str | None = None


def _version(value: bool) -> None:
    if value:
        from workplex import __version__

        typer.echo(f"workplex {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (default: $WORKPLEX_CONFIG, then ./workplex.yaml).",
            envvar="WORKPLEX_CONFIG",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    State.config_path = config


# ---- shared helpers ------------------------------------------------------------------
def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print an error paragraph to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def build_registry() -> Registry:
    """The registry for this invocation, from the config file; bad config exits 2."""
    from workplex.config import load_config
    from workplex.errors import ConfigError
    from workplex.overlays import default_overlays
    from workplex.registry import Registry

    try:
        config = load_config(State.config_path)
        return Registry(config, overlays=default_overlays(config))
    except ConfigError as exc:
        fail(str(exc))


def read_json_arg(value: str, what: str) -> Any:
    """Parse ``value`` as JSON, or read JSON from a file given as ``@path``."""
    source = what
    if value.startswith("@"):
        path = Path(value[1:])
        source = str(path)
        try:
            value = sys.stdin.read() if value == "@-" else path.read_text()
        except OSError as exc:
            fail(f"{what}: cannot read {path}: {exc.strerror}")
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        fail(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def run_async(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


# ---- exec ------------------------------------------------------------------------------
@app.command("exec")
def exec_(
    executor: Annotated[str, typer.Argument(help="Executor type, e.g. command, http, echo.")],
    input: Annotated[
        str,
        typer.Option("--input", "-i", help="The payload as JSON, or @file.json (@- for stdin)."),
    ] = "{}",
    as_json: Annotated[bool, typer.Option("--json", help="Print the Result as JSON.")] = False,
) -> None:
    """Run one task and print its Result.

    Example: workplex exec command --input '{"command": "echo", "args": ["hi"]}'
    """
    from workplex.errors import ValidationError
    from workplex.executor import Task

    payload = read_json_arg(input, "--input")
    registry = build_registry()
    task = Task(executor, payload)
    try:
        registry.validate(task)
    except ValidationError as exc:
        fail(str(exc))

    async def go() -> Result:
        async with registry:
            return await registry.execute(task)

    result = run_async(go())
    if as_json:
        print_json(result.to_dict())
    else:
        _print_result(result, registry)
    failed = not result.success or (result.exit_code not in (None, 0))
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def _print_result(result: Result, registry: Registry) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.pretty import Pretty
    from rich.table import Table

    console = Console()
    ok = result.success and result.exit_code in (None, 0)
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", "[green]succeeded[/]" if ok else "[red]failed[/]")
    if result.exit_code is not None:
        table.add_row("exit code", str(result.exit_code))
    if result.error is not None:
        table.add_row("error", f"{result.error.type}: {result.error.message}")
    if result.metrics is not None:
        m = result.metrics
        table.add_row("duration", f"{m.duration * 1000:.1f} ms  (attempts: {m.attempts})")
    table.add_row("task", result.task_id)
    console.print(table)
    if result.output is not None:
        out = result.output
        if isinstance(out, dict) and {"stdout", "stderr"} <= set(out):
            if out.get("stdout"):
                console.print(Panel(str(out["stdout"]).rstrip("\n"), title="stdout", expand=False))
            if out.get("stderr"):
                console.print(Panel(str(out["stderr"]).rstrip("\n"), title="stderr", expand=False))
        else:
            console.print(Panel(Pretty(out), title="output", expand=False))


# ---- executors / schema / health ---------------------------------------------------------
@app.command("executors")
def executors_(
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON with each executor's input and output schemas.")
    ] = False,
) -> None:
    """List the installed executors: name, security level, description."""
    registry = build_registry()
    infos = [registry.info(n) for n in registry.names(include_disabled=True)]
    if as_json:
        print_json([i.to_dict() for i in infos])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="workplex executors")
    table.add_column("name", style="bold")
    table.add_column("security")
    table.add_column("description")
    table.add_column("from", style="dim")
    for i in infos:
        name = i.name if i.enabled else f"{i.name} (disabled)"
        table.add_row(name, i.security.value, i.description, i.distribution)
    Console().print(table)


@app.command("schema")
def schema(
    executor: Annotated[
        str | None, typer.Argument(help="One executor; without it, all of them.")
    ] = None,
    pipeline: Annotated[
        bool, typer.Option("--pipeline", help="One JSON Schema for pipeline files.")
    ] = False,
) -> None:
    """Print JSON Schemas: of one executor's input/output, of all, or of pipeline files."""
    from workplex.errors import ValidationError

    registry = build_registry()
    if pipeline:
        from workplex.pipeline.schema import pipeline_schema

        print_json(pipeline_schema(registry))
        return
    try:
        names = [executor] if executor else registry.names()
        out = {
            n: {
                "security": registry.info(n).security.value,
                "input": registry.info(n).input_schema,
                "output": registry.info(n).output_schema,
            }
            for n in names
        }
        if executor:
            registry.get(executor)
    except ValidationError as exc:
        fail(str(exc))
    print_json(out[executor] if executor else out)


@app.command("health")
def health(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check every enabled executor (starts each one and asks it). Exit 1 if any is unhealthy."""
    registry = build_registry()

    async def go() -> dict[str, dict[str, Any]]:
        async with registry:
            return await registry.health()

    report = run_async(go())
    if as_json:
        print_json(report)
    else:
        for name, entry in report.items():
            mark = "ok  " if entry["ok"] else "FAIL"
            typer.echo(f"{mark} {name}: {entry['detail']}")
    raise typer.Exit(EXIT_OK if all(e["ok"] for e in report.values()) else EXIT_FAILED)


def main() -> None:
    """Console entry point: turns workplex's own errors into a message and exit code 2."""
    from click.exceptions import Exit as ClickExit

    try:
        rc = app(standalone_mode=False)
    except ClickExit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(EXIT_BAD_INPUT if exc.exit_code in (1, 2) else exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("aborted", err=True)
            sys.exit(130)
        from workplex.errors import WorkplexError

        if isinstance(exc, WorkplexError):
            typer.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        raise
    sys.exit(rc if isinstance(rc, int) else EXIT_OK)


if __name__ == "__main__":
    main()
