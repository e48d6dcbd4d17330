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
    from workplex.config import Config
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
            metavar="FILE", help="Config file (default: $WORKPLEX_CONFIG, then ./workplex.yaml).",
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
        registry = Registry(config, overlays=default_overlays(config))
    except ConfigError as exc:
        fail(str(exc))
    # A broken plugin is an error only where it is used; elsewhere one line says so.
    for broken in registry.broken:
        typer.echo(f"warning: {broken.reason}", err=True)
    return registry


def read_json_arg(value: str, what: str) -> Any:
    """Parse ``value`` as JSON, or read JSON from a file given as ``@path``."""
    from workplex.errors import unreadable

    source = what
    if value.startswith("@"):
        path = Path(value[1:])
        source = str(path)
        try:
            value = sys.stdin.read() if value == "@-" else path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{what}: cannot read {path}: {unreadable(exc)}")
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        fail(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
    except RecursionError:
        fail(f"{source}: JSON nested too deeply to read")


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def run_async(coro: Any) -> Any:
    """``asyncio.run`` where SIGTERM cancels the work like Ctrl-C does.

    Without this, ``kill`` (or a supervisor stopping the process) would end Python before
    the executors' cancellation ran, leaving their child processes behind. It surfaces as
    ``KeyboardInterrupt``, so each command reports it the same way as Ctrl-C.
    """
    import asyncio
    import signal

    terminated = False

    async def main() -> Any:
        nonlocal terminated
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise


# ---- exec ------------------------------------------------------------------------------
@app.command("exec")
def exec_(
    executor: Annotated[
        str, typer.Argument(metavar="EXECUTOR", help="Executor type, e.g. command, http, echo.")
    ],
    input: Annotated[
        str,
        typer.Option(
            "--input", "-i", metavar="JSON|@FILE",
            help="The payload as JSON, or @file.json (@- for stdin).",
        ),
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
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console()
    ok = result.success and result.exit_code in (None, 0)
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", "[green]succeeded[/]" if ok else "[red]failed[/]")
    if result.exit_code is not None:
        table.add_row("exit code", str(result.exit_code))
    if result.error is not None:
        # Messages are plain text: "[http]" in a pip command is not rich markup.
        table.add_row("error", escape(f"{result.error.type}: {result.error.message}"))
    if result.metrics is not None:
        m = result.metrics
        table.add_row("duration", f"{m.duration * 1000:.1f} ms  (attempts: {m.attempts})")
    table.add_row("task", result.task_id)
    console.print(table)
    if result.output is not None:
        out = result.output
        # Program output and data are shown as they are: Text, not rich markup, so
        # "[/]" or "a[b]c" in a program's output is printed, not interpreted.
        if isinstance(out, dict) and {"stdout", "stderr"} <= set(out):
            for stream in ("stdout", "stderr"):
                if out.get(stream):
                    text = Text(str(out[stream]).rstrip("\n"))
                    console.print(Panel(text, title=stream, expand=False))
        else:
            shown = Text(json.dumps(out, indent=2, ensure_ascii=False, default=str))
            console.print(Panel(shown, title="output", expand=False))


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
    skipped = registry.not_loaded
    if as_json:
        print_json(
            [{**i.to_dict(), "broken": False} for i in infos]
            + [
                {"name": n, "distribution": d, "enabled": False, "loaded": False, "broken": False}
                for n, d in skipped.items()
            ]
            + [{**b.to_dict(), "enabled": False, "broken": True} for b in registry.broken]
        )
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="workplex executors")
    table.add_column("name", style="bold")
    table.add_column("security")
    table.add_column("description")
    table.add_column("from", style="dim")
    for i in infos:
        name = i.name if i.enabled else f"{i.name} (disabled)"
        table.add_row(Text(name), i.security.value, Text(i.description), Text(i.distribution))
    for n, d in skipped.items():
        table.add_row(Text(f"{n} (disabled)"), "-", "not loaded", Text(d))
    console = Console()
    console.print(table)
    if registry.broken:
        # Listed, not fatal: the other executors still work (exit 0).
        broken = Table(title="broken executor plugins (not registered)")
        broken.add_column("name", style="bold red")
        broken.add_column("from", style="dim")
        broken.add_column("reason")
        for b in registry.broken:
            broken.add_row(Text(b.name), Text(b.distribution), Text(b.reason))
        console.print(broken)


@app.command("schema")
def schema(
    executor: Annotated[
        str | None,
        typer.Argument(metavar="EXECUTOR", help="One executor; without it, all of them."),
    ] = None,
    pipeline: Annotated[
        bool, typer.Option("--pipeline", metavar="NAME", help="One JSON Schema for pipeline files.")
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
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="EXECUTOR", help="Only these executors (default: all enabled)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", min=0.001, help="Time allowed per check."),
    ] = 10.0,
) -> None:
    """Check enabled executors (starts each one and asks it). Exit 1 if any is unhealthy.

    Example: workplex health command http
    """
    from workplex.errors import UnknownExecutorError

    registry = build_registry()

    import os

    def show(report: dict[str, dict[str, Any]]) -> None:
        if as_json:
            print_json(report)
        else:
            for name, entry in report.items():
                mark = "ok  " if entry["ok"] else "FAIL"
                typer.echo(f"{mark} {name}: {entry['detail']}")

    async def go() -> dict[str, dict[str, Any]]:
        async with registry:
            report = await registry.health(names or None, timeout=timeout)
            show(report)
            if any(e.get("timed_out") for e in report.values()):
                # A check stuck in a blocking call on a thread cannot be stopped, and Python
                # would wait for it at exit: the report is out, so leave now.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_FAILED)
            return report

    try:
        report = run_async(go())
    except UnknownExecutorError as exc:
        fail(str(exc))
    raise typer.Exit(EXIT_OK if all(e["ok"] for e in report.values()) else EXIT_FAILED)


@app.command("overlays")
def overlays_(
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
) -> None:
    """List the overlay chain, outermost first, with each overlay's options and defaults."""
    from workplex.config import load_config
    from workplex.errors import ConfigError
    from workplex.overlays import default_overlays

    try:
        chain = default_overlays(load_config(State.config_path))
    except ConfigError as exc:
        fail(str(exc))
    infos = chain.describe()
    if as_json:
        print_json({"order": [i.to_dict() for i in infos], "defaults": chain.defaults})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="workplex overlays (outermost first; the executor is innermost)")
    table.caption = "Per-attempt parts run inside retry, just outside timeout."
    table.add_column("#", justify="right")
    table.add_column("overlay", style="bold")
    table.add_column("options (default)")
    table.add_column("from", style="dim")
    for i in infos:
        opts = ", ".join(
            f"{k} (required)" if v["required"] else f"{k}={v['default']!r}"
            for k, v in i.options.items()
        )
        name = f"{i.name}\n(+ per attempt)" if i.attempt_hook else i.name
        table.add_row(str(i.position), name, f"{i.description}\n{opts or '-'}", i.distribution)
    Console().print(table)


# ---- pipelines -----------------------------------------------------------------------------
def cli_texts(pairs: list[str]) -> dict[str, str]:
    """``--input NAME=VALUE`` pairs as the text typed (the last one of a name wins)."""
    return {key: value for key, sep, value in (p.partition("=") for p in pairs) if sep and key}


def parse_inputs(pairs: list[str], inputs_file: str | None) -> dict[str, Any]:
    """``--input k=v`` pairs (values parsed as JSON when they are JSON) over ``--inputs-file``."""
    from workplex.errors import unreadable

    inputs: dict[str, Any] = {}
    if inputs_file:
        import yaml

        try:
            data = yaml.safe_load(Path(inputs_file).read_text())
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--inputs-file: cannot read {inputs_file}: {unreadable(exc)}")
        except yaml.YAMLError as exc:
            fail(f"--inputs-file {inputs_file}: not valid YAML/JSON: {exc}")
        except RecursionError:
            fail(f"--inputs-file {inputs_file}: nested too deeply to read")
        if not isinstance(data, dict):
            fail(f"--inputs-file {inputs_file}: must hold a mapping of input names to values")
        inputs.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--input {pair!r}: expected NAME=VALUE")
        try:
            inputs[key] = json.loads(value)
        except json.JSONDecodeError:
            inputs[key] = value
        except RecursionError:
            fail(f"--input {key}: JSON nested too deeply to read")
    return inputs


def summarize_run(data: dict[str, Any]) -> None:
    """Print a run's outcome as a readable table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colors = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "paused": "cyan"}
    status = data["status"]
    table = Table(title=f"run {data['run_id']} ({data['pipeline']})")
    table.add_column("stage", style="bold")
    table.add_column("status")
    table.add_column("tasks", justify="right")
    table.add_column("time", justify="right")
    table.add_column("error / note", overflow="fold")
    for name, st in data["stages"].items():
        tasks = st.get("tasks") or {}
        count = f"{tasks.get('succeeded', 0)}/{tasks.get('total', 0)}"
        if tasks.get("failed"):
            count += f" ({tasks['failed']} failed)"
        dur = st.get("duration")
        note = st.get("error") or (st.get("info") or {}).get("reason") or ""
        color = colors.get(st["status"], "white")
        table.add_row(
            name, f"[{color}]{st['status']}[/]", count, f"{dur:.2f}s" if dur else "-", escape(str(note))
        )
    console = Console()
    console.print(table)
    last = [n for n, st in data["stages"].items() if st.get("status") == "succeeded"]
    if status == "succeeded" and last:
        # The last stage's output is usually what the run was for: show its start.
        text = json.dumps(data["stages"][last[-1]].get("output"), indent=2, default=str)
        lines = text.splitlines()
        if len(lines) > 20:
            lines = [*lines[:20], f"... ({len(lines) - 20} more lines: --json shows all)"]
        console.print(f"output of stage {last[-1]!r}:", style="bold")
        console.print(escape("\n".join(lines)), highlight=False)
    line = f"[{colors.get(status, 'white')}]{status}[/]"
    if data.get("duration") is not None:
        line += f" in {data['duration']:.2f}s"
    if data.get("error") and status != "paused":
        line += f": {escape(str(data['error']))}"
    console.print(line)
    if status == "paused":
        paused = [n for n, st in data["stages"].items() if st.get("status") == "paused"]
        where = paused[0] if len(paused) == 1 else "STAGE"
        # The engine lists the approvals it waits for, sub-runs' included: name those.
        approvals = [
            f"  workplex approve {w['run_id']} {w['stage']}   (or --reject)"
            + ("" if w["run_id"] == data["run_id"] else "   (a sub-run of this run)")
            for w in data.get("waiting") or []
        ] or [f"  workplex approve {data['run_id']} {where}   (or --reject)"]
        console.print(
            f"The run is paused ({escape(str(data.get('error')))}). Continue it with:\n"
            + escape("\n".join(approvals))
            + f"\n  workplex resume {data['run_id']}",
            highlight=False,
        )


def drive_and_report(coro: Any, run_id: str, as_json: bool, resumable: bool = True) -> NoReturn:
    """Run ``coro`` (a run or a resume), print the outcome, exit 0 (succeeded or paused) or 1.

    Bad input exits 2; Ctrl-C says how to resume (when the run is recorded).
    """
    from workplex.errors import WorkplexError

    try:
        result = run_async(coro)
    except KeyboardInterrupt:
        how = f"resume it with: workplex resume {run_id}" if resumable else "not recorded: --no-store"
        typer.echo(f"run {run_id} cancelled ({how})", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    except WorkplexError as exc:
        fail(str(exc))
    data = result.to_dict()
    if as_json:
        print_json(data)
    else:
        summarize_run(data)
    raise typer.Exit(EXIT_OK if result.status in ("succeeded", "paused") else EXIT_FAILED)


async def drive_with_progress(engine: Any, run_id: str, coro: Any, show: bool) -> Any:
    """Await ``coro`` (a run) while showing one progress bar per running stage."""
    import asyncio

    if not show:
        return await coro
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    task = asyncio.ensure_future(coro)
    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:

        def refresh(stages: dict[str, Any]) -> None:
            for name, st in stages.items():
                if st.status == "pending" and name not in bars:
                    continue
                if name not in bars:
                    bars[name] = progress.add_task(name, total=None, failed="")
                done = st.succeeded + st.failed
                failed = f"[red]{st.failed} failed[/]" if st.failed else ""
                progress.update(
                    bars[name], total=st.total or None, completed=done, failed=failed,
                    # Escaped: "[running]" would otherwise be read as rich markup and vanish.
                    description=escape(f"{name} [{st.status}]"),
                )
                if st.status not in ("pending", "running"):
                    progress.stop_task(bars[name])  # its clock stops with the stage

        while not task.done():
            state = engine.runs.get(run_id)
            if state is not None:
                refresh({name: run.result for name, run in state.runs.items()})
            await asyncio.wait([task], timeout=0.1)
        if not task.cancelled() and task.exception() is None:
            # The run's state is gone once it ends: the last picture comes from its result.
            refresh(task.result().stages)
    return task.result()


async def open_store(url: str | None, config: Config) -> Any:
    """The run store named by --store / $WORKPLEX_STORE / config `store:` / the per-user
    default file, with the config's output cap. A bad URL exits 2."""
    from workplex.errors import StoreError
    from workplex.store import Store, resolve_url

    try:
        return await Store.open(
            resolve_url(url, config.store), max_output_bytes=config.store_max_output_bytes
        )
    except StoreError as exc:
        fail(str(exc))


async def open_store_or_none(store_url: str | None, no_store: bool, registry: Registry) -> Any:
    """The run store for ``run`` (None with --no-store)."""
    return None if no_store else await open_store(store_url, registry.config)


# ---- backend options shared by run, resume and approve --resume ----------------------------
BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        metavar="BACKEND",
        help="local (default) or nats://HOST:4222 (resume: default the run's own backend).",
        envvar="WORKPLEX_BACKEND",
    ),
]
WaitForWorkersOption = Annotated[
    float,
    typer.Option(
        "--wait-for-workers", metavar="SECONDS", help="Seconds to wait for workers (nats backend)."
    ),
]
NatsCreds = Annotated[
    str | None,
    typer.Option("--nats-creds", metavar="FILE", help="NATS credentials file (.creds).", envvar="WORKPLEX_NATS_CREDS"),
]
TlsCa = Annotated[
    str | None,
    typer.Option("--tls-ca", metavar="FILE", help="CA bundle for a TLS NATS server.", envvar="WORKPLEX_NATS_TLS_CA"),
]
TlsCert = Annotated[
    str | None,
    typer.Option("--tls-cert", metavar="FILE", help="Client certificate (mTLS).", envvar="WORKPLEX_NATS_TLS_CERT"),
]
TlsKey = Annotated[
    str | None, typer.Option("--tls-key", metavar="FILE", help="Client key (mTLS).", envvar="WORKPLEX_NATS_TLS_KEY")
]


def backend_options(
    wait_for_workers: float,
    nats_creds: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> dict[str, Any]:
    """The keyword options ``open_backend`` passes to a nats backend (unset ones left out)."""
    given = {"creds": nats_creds, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}
    options: dict[str, Any] = {k: v for k, v in given.items() if v}
    if wait_for_workers:
        options["wait_for_workers"] = wait_for_workers
    return options


@app.command("run")
def run(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The pipeline file (YAML).")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", metavar="NAME=VALUE",
            help="A run input as NAME=VALUE (repeatable; JSON values ok).",
        ),
    ] = None,
    inputs_file: Annotated[
        str | None,
        typer.Option("--inputs-file", metavar="FILE", help="A YAML/JSON file of run inputs."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run result as JSON.")] = False,
    backend: BackendOption = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store", metavar="URL", envvar="WORKPLEX_STORE",
            help="Run store URL (sqlite:///file.db, postgresql://...).",
        ),
    ] = None,
    no_store: Annotated[
        bool, typer.Option("--no-store", help="Do not record the run (no resume possible).")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", metavar="PORT", help="Serve Prometheus metrics on this port."),
    ] = None,
    wait_for_workers: WaitForWorkersOption = 0.0,
    nats_creds: NatsCreds = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Run a pipeline file. Exit 0 when it succeeds (or pauses), 1 when it fails, 2 on bad input."""
    from workplex.engine import new_run_id

    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        fail(f"--metrics-port {metrics_port}: not a TCP port (use 1 to 65535, or 0 for any free one)")

    inputs = parse_inputs(input or [], inputs_file)
    registry = build_registry()
    run_id = new_run_id()
    show = not as_json and sys.stdout.isatty()

    async def go() -> Any:
        from workplex.backends import open_backend
        from workplex.engine import Engine

        stop_metrics = None
        if metrics_port is not None:
            from workplex.overlays.chain import OverlayChain
            from workplex.overlays.metrics import serve_metrics

            chain = registry.overlays
            assert isinstance(chain, OverlayChain)
            chain.enable("metrics")
            stop_metrics = serve_metrics(metrics_port, registry=chain)
            # On stderr, so `--json` output stays one document; says which port 0 picked.
            typer.echo(f"metrics: http://{stop_metrics.host}:{stop_metrics.port}/metrics", err=True)
        the_store = await open_store_or_none(store, no_store, registry)
        try:
            options = backend_options(wait_for_workers, nats_creds, tls_ca, tls_cert, tls_key)
            be = open_backend(backend, registry, **options) if backend else None
            async with registry, Engine(registry, backend=be, store=the_store) as engine:
                pipeline = engine.load(file)
                # Text given for a string input stays text: `--input tag=3` is "3", not 3.
                for key, text in cli_texts(input or []).items():
                    spec = pipeline.inputs.get(key)
                    if spec is not None and spec.type == "string":
                        inputs[key] = text
                return await drive_with_progress(
                    engine, run_id, engine.run(pipeline, inputs, run_id=run_id), show
                )
        finally:
            if the_store is not None:
                await the_store.close()
            if stop_metrics is not None:
                stop_metrics.stop()

    drive_and_report(go(), run_id, as_json, resumable=not no_store)


@app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Pipeline files to check.")],
) -> None:
    """Check pipeline files without running them; every problem is listed."""
    from workplex.engine import Engine
    from workplex.errors import PipelineError

    registry = build_registry()
    engine = Engine(registry)
    bad = 0
    for file in files:
        try:
            pipeline = engine.load(file)
        except PipelineError as exc:
            bad += 1
            for problem in exc.problems:
                typer.echo(f"error: {problem}", err=True)
            continue
        typer.echo(f"ok: {file} (pipeline {pipeline.name!r}, {len(pipeline.stages)} stages)")
    if bad:
        raise typer.Exit(EXIT_BAD_INPUT)


# ---- worker / workers (NATS) ----------------------------------------------------------------
NatsUrl = Annotated[
    str, typer.Option("--nats", metavar="URL", help="NATS server URL.", envvar="WORKPLEX_NATS_URL")
]


@app.command("worker")
def worker_(
    nats: NatsUrl = "nats://127.0.0.1:4222",
    concurrency: Annotated[
        int, typer.Option("--concurrency", metavar="N", help="Tasks run at once by this worker.")
    ] = 16,
    executors: Annotated[
        str | None,
        typer.Option("--executors", metavar="NAMES", help="Offer only these executors (comma-separated)."),
    ] = None,
    worker_id: Annotated[str | None, typer.Option("--id", metavar="ID", help="Worker id (default host-pid).")] = None,
    grace: Annotated[
        float, typer.Option("--grace", metavar="SECONDS", help="Seconds to finish running tasks on SIGTERM.")
    ] = 30.0,
    heartbeat: Annotated[float, typer.Option("--heartbeat", metavar="SECONDS", help="Seconds between heartbeats.")] = 5.0,
    ack_wait: Annotated[
        float, typer.Option("--ack-wait", metavar="SECONDS", help="Seconds before a silent task is redelivered.")
    ] = 30.0,
    max_deliver: Annotated[
        int, typer.Option("--max-deliver", metavar="N", help="Deliveries before a task is dead-lettered.")
    ] = 5,
    fetch_batch: Annotated[int, typer.Option("--fetch-batch", metavar="N", help="Tasks per pull request.")] = 256,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas", metavar="N",
            help="Stream replicas (cluster; default 1). Given: existing streams are updated to it.",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", metavar="KIND",
            help="Stream storage, file (default) or memory. Given: existing streams must have it.",
        ),
    ] = None,
    redeliver_retryable: Annotated[
        bool,
        typer.Option(
            "--redeliver-retryable/--no-redeliver-retryable",
            help="Hand a task that failed with a retryable error back for another delivery "
            "(until --max-deliver), instead of reporting the failure at once.",
        ),
    ] = True,
    nak_delay: Annotated[
        float,
        typer.Option("--nak-delay", metavar="SECONDS", help="Delay before a handed-back task is redelivered."),
    ] = 5.0,
    nats_creds: NatsCreds = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Pull tasks from NATS JetStream for the executors this machine has, until SIGTERM."""
    from workplex.backends.jetstream import ConnectOptions, StreamSettings
    from workplex.errors import ConfigError
    from workplex.worker import Worker

    registry = build_registry()
    wanted = [e.strip() for e in executors.split(",") if e.strip()] if executors else None
    try:
        worker = Worker(
            registry,
            nats,
            concurrency,
            wanted,
            worker_id,
            heartbeat,
            grace,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            fetch_batch=fetch_batch,
            nak_delay=nak_delay,
            redeliver_retryable=redeliver_retryable,
            connect_options=ConnectOptions(nats_creds, tls_ca, tls_cert, tls_key),
            stream_settings=StreamSettings(replicas=replicas or 1, storage=storage or "file"),
            update_streams=[
                name
                for name, given in (("replicas", replicas), ("storage", storage))
                if given is not None
            ],
        )
        if storage not in (None, "file", "memory"):
            raise ConfigError(f"--storage: {storage!r} is not file or memory")
    except ConfigError as exc:
        fail(str(exc))
    typer.echo(
        f"worker {worker.id} on {nats}: {', '.join(worker.executors)} "
        f"(concurrency {concurrency})",
        err=True,
    )
    run_async(worker.run())
    typer.echo(f"worker {worker.id} stopped ({worker.completed} tasks run)", err=True)


@app.command("workers")
def workers_(
    nats: NatsUrl = "nats://127.0.0.1:4222",
    as_json: Annotated[bool, typer.Option("--json", help="Print the workers as JSON.")] = False,
    nats_creds: NatsCreds = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """List live workers: id, host, executors, concurrency and load (creates nothing)."""
    from workplex.backends.jetstream import ConnectOptions, list_workers

    options = ConnectOptions(nats_creds, tls_ca, tls_cert, tls_key)
    workers = run_async(list_workers(nats, options))
    if as_json:
        print_json(workers)
        return
    if not workers:
        typer.echo("no live workers")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"workplex workers on {nats}")
    for col in ("id", "host", "pid", "executors", "concurrency", "load"):
        table.add_column(col)
    for w in workers:
        names = ", ".join(
            f"{n} ({e.get('security')})" for n, e in sorted((w.get("executors") or {}).items())
        )
        table.add_row(
            str(w.get("id")), str(w.get("host")), str(w.get("pid")), names,
            str(w.get("concurrency")), str(w.get("load")),
        )
    Console().print(table)


# ---- durable runs (the run store) ----------------------------------------------------------
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL", help="Run store URL (sqlite:///file.db, postgresql://...); default: the per-user file.",
        envvar="WORKPLEX_STORE",
    ),
]


_STORE_FILE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _existing_store_url(url: str | None, configured: str | None) -> str:
    """The store URL for a command on recorded runs, which never creates a store: a SQLite
    file that does not exist exits 2 (a mistyped path would otherwise show an empty store),
    and so does a bare word that is neither a URL nor a ``.db``/``.sqlite`` path."""
    import os

    from workplex.errors import StoreError
    from workplex.store.url import driver_url, redact, resolve_url, sqlite_file

    chosen = resolve_url(url, configured)
    where = "--store" if url else ("config `store:`" if configured else "the default store")
    if url and os.environ.get("WORKPLEX_STORE") == url:
        where = "--store ($WORKPLEX_STORE)"
    if "://" not in chosen and not chosen.lower().endswith(_STORE_FILE_SUFFIXES):
        fail(
            f"{where} {chosen!r}: not a store URL; use sqlite:///PATH, "
            "postgresql://USER@HOST/DB, or a file path ending in .db, .sqlite or .sqlite3"
        )
    try:
        path = sqlite_file(driver_url(chosen))
    except StoreError as exc:
        fail(str(exc))
    if path is not None and not path.is_file():
        fail(f"no run store at {path} ({where} {redact(chosen)}); `workplex run` creates it")
    return chosen


def _open_store(url: str | None) -> Any:
    """An async context manager opening the store named by --store / env / config / default;
    the store must exist (see ``_existing_store_url``)."""
    import contextlib

    @contextlib.asynccontextmanager
    async def opened() -> Any:
        from workplex.config import load_config
        from workplex.errors import ConfigError

        try:
            config = load_config(State.config_path)
        except ConfigError as exc:
            fail(str(exc))
        store = await open_store(_existing_store_url(url, config.store), config)
        try:
            yield store
        finally:
            await store.close()

    return opened()


def _when(ts: float | None) -> str:
    import time

    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def parse_age(value: str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (or a plain number of seconds)."""
    from workplex.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError:
        fail(f"--older-than {value!r}: use a number with a unit, e.g. 30d, 12h, 90m, 2w")


_RUN_COLORS = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "paused": "cyan"}
_RUN_STATUSES = ("pending", "running", "paused", "succeeded", "failed", "cancelled")


@app.command("runs")
def runs_(
    status: Annotated[
        str | None, typer.Option("--status", metavar="STATUS", help="Only runs with this status (e.g. failed).")
    ] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", metavar="NAME", help="Only this pipeline.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", metavar="N", help="How many runs to list.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
    store: StoreOption = None,
) -> None:
    """List recorded runs, newest first."""
    if status is not None and status not in _RUN_STATUSES:
        fail(f"--status {status!r}: not a run status; use one of {', '.join(_RUN_STATUSES)}")
    if limit < 1:
        fail(f"--limit {limit}: must be at least 1")

    from workplex.config import load_config
    from workplex.errors import ConfigError
    from workplex.store.url import default_path

    try:
        configured = load_config(State.config_path).store
    except ConfigError as exc:
        fail(str(exc))
    if store is None and configured is None and not default_path().is_file():
        # A fresh machine: nothing recorded yet is not an error (a mistyped --store is).
        found: list[Any] = []
    else:

        async def go() -> Any:
            async with _open_store(store) as s:
                return await s.list_runs(status=status, pipeline=pipeline, limit=limit)

        found = run_async(go())
    if as_json:
        print_json([r.to_dict() for r in found])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="workplex runs (newest first)")
    for col in ("run", "pipeline", "status", "created", "duration", "parent"):
        # Run ids are what the other commands take: never cut, even piped or at 80 columns.
        table.add_column(
            col, style="bold" if col == "run" else None, no_wrap=col == "run",
            min_width=max((len(r.run_id) for r in found), default=3) if col == "run" else None,
        )
    for r in found:
        color = _RUN_COLORS.get(r.status, "white")
        table.add_row(
            r.run_id, r.pipeline, f"[{color}]{r.status}[/]", _when(r.created),
            _secs(r.duration), r.parent_run_id or "",
        )
    Console().print(table)


async def _require_run(s: Any, run_id: str) -> Any:
    run = await s.get_run(run_id)
    if run is None:
        fail(f"no run {run_id!r} in the store {_store_where(s)}")
    return run


def _store_where(s: Any) -> str:
    from workplex.store.url import redact

    return str(redact(s.url))


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run id (see `workplex runs`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
    store: StoreOption = None,
) -> None:
    """Show a run: stages, task counts, attempts, errors, durations, sub-runs."""

    async def go() -> dict[str, Any]:
        async with _open_store(store) as s:
            run = await _require_run(s, run_id)
            stats = await s.task_stats(run_id)
            return {
                "run": run,
                "stats": stats,
                "failed": await s.failed_tasks(run_id),
                "children": await s.list_runs(parent_run_id=run_id, limit=1000),
            }

    got = run_async(go())
    run, stats, failed, children = got["run"], got["stats"], got["failed"], got["children"]
    if as_json:
        data = run.to_dict()
        for name, st in data["stages"].items():
            st["tasks"] = stats[name].to_dict() if name in stats else None
        data["failed_tasks"] = failed
        data["children"] = [{"run_id": c.run_id, "status": c.status} for c in children]
        print_json(data)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    head = Table.grid(padding=(0, 1))
    head.add_column(style="bold")
    head.add_column()
    color = _RUN_COLORS.get(run.status, "white")
    head.add_row("run", run.run_id)
    head.add_row("pipeline", f"{run.pipeline}" + (f"  ({run.path})" if run.path else ""))
    head.add_row("status", f"[{color}]{run.status}[/]")
    if run.error:
        head.add_row("error", escape(run.error))
    head.add_row("created", _when(run.created))
    head.add_row("started / ended", f"{_when(run.started)} / {_when(run.ended)}")
    head.add_row("duration", _secs(run.duration))
    if run.inputs:
        head.add_row("inputs", json.dumps(run.inputs, default=str)[:200])
    if run.parent_run_id:
        head.add_row("parent run", run.parent_run_id)
    if children:
        head.add_row("sub-runs", ", ".join(f"{c.run_id} ({c.status})" for c in children))
    if run.lease_owner:
        head.add_row("driven by", f"{run.lease_owner} (lease until {_when(run.lease_until)})")
    console.print(head)
    table = Table(title="stages")
    for col in ("stage", "status", "tasks ok/failed", "attempts", "time (task avg)", "error"):
        table.add_column(col, overflow="fold" if col == "error" else "ellipsis")
    for name, st in run.stages.items():
        ts = stats.get(name)
        stcolor = _RUN_COLORS.get(st.status, "white")
        dur = (st.ended - st.started) if st.started and st.ended else None
        counts = attempts = "-"
        avg = ""
        if ts is not None:
            counts = f"{ts.succeeded}/{ts.failed}" + (f" of {st.total}" if st.total else "")
            attempts = f"max {ts.max_attempts}" + (f", {ts.retried} retried" if ts.retried else "")
            avg = f" ({_secs(ts.avg_duration)})"
        table.add_row(
            name, f"[{stcolor}]{st.status}[/]", counts, attempts, _secs(dur) + avg,
            escape(st.error or ""),
        )
    console.print(table)
    if failed:
        ft = Table(title=f"failed tasks (first {len(failed)})")
        for col in ("stage", "index", "executor", "attempts", "exit", "error"):
            ft.add_column(col, overflow="fold" if col == "error" else "ellipsis")
        for f in failed:
            err = f["error"]
            # A non-zero exit has no error of its own: its exit code and stderr say why.
            why = f"{err.get('type', '')}: {err.get('message', '')}" if err else ""
            if not why and f["exit_code"] not in (None, 0):
                why = f"exit code {f['exit_code']}"
            if f.get("stderr_tail"):
                why += f"\nstderr (tail):\n{f['stderr_tail']}"
            ft.add_row(
                f["stage"], str(f["index"]), f["executor"], str(f["attempts"]),
                "" if f["exit_code"] is None else str(f["exit_code"]),
                escape(why),
            )
        console.print(ft)


@app.command("logs")
def logs(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run id.")],
    stage: Annotated[str | None, typer.Option("--stage", "-s", metavar="STAGE", help="Only this stage.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    store: StoreOption = None,
) -> None:
    """Print a run's log lines and events, oldest first."""

    async def go() -> Any:
        async with _open_store(store) as s:
            found = await _require_run(s, run_id)
            if stage is not None and stage not in found.stages:
                names = ", ".join(found.stages) or "none"
                fail(f"--stage {stage!r}: run {run_id} has no such stage (its stages: {names})")
            return await s.events(run_id, stage=stage)

    for e in run_async(go()):
        if as_json:
            typer.echo(json.dumps({"ts": e.ts, "kind": e.kind, "stage": e.stage, "data": e.data}))
            continue
        data = dict(e.data)
        data.pop("stage", None)
        message = data.pop("message", None)
        rest = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
        text = " ".join(str(p) for p in (message, rest) if p)
        where = f"[{e.stage}] " if e.stage else ""
        typer.echo(f"{_when(e.ts)} {e.kind:<18} {where}{text}")


@app.command("cancel")
def cancel(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run id.")],
    store: StoreOption = None,
) -> None:
    """Cancel a run: at once if nobody drives it, else at its driver's next lease renewal."""

    async def go() -> tuple[Any, str]:
        async with _open_store(store) as s:
            run = await _require_run(s, run_id)
            if run.status in ("succeeded", "failed", "cancelled"):
                fail(f"run {run_id} has already {run.status}; nothing to cancel")
            return run, await s.request_cancel(run_id)

    run, status = run_async(go())
    if status == "cancelled":
        typer.echo(f"run {run_id} cancelled")
    else:
        typer.echo(
            f"cancel requested: run {run_id} is driven by {run.lease_owner}; "
            "it stops within a lease renewal"
        )


def _resume_and_report(
    run_id: str,
    store: str | None,
    as_json: bool,
    backend: str | None = None,
    backend_opts: dict[str, Any] | None = None,
) -> NoReturn:
    """Resume a run in this process (the shared part of `resume` and `approve --resume`).

    ``backend`` None: the backend the run was started with (its ``backend`` event), else local.
    """

    registry = build_registry()
    show = not as_json and sys.stdout.isatty()

    async def go() -> Any:
        from workplex.backends import open_backend
        from workplex.engine import Engine

        async with _open_store(store) as s:
            url = backend
            if url is None:
                found = await s.events(run_id, kinds=["backend"])
                url = str(found[-1].data.get("url") or "") if found else None
            be = open_backend(url, registry, **(backend_opts or {})) if url else None
            if be is not None and url != backend:
                typer.echo(f"resuming run {run_id} on its backend {url}", err=True)
            async with registry, Engine(registry, backend=be, store=s) as engine:
                return await drive_with_progress(engine, run_id, engine.resume(run_id), show)

    drive_and_report(go(), run_id, as_json)


@app.command("resume")
def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run result as JSON.")] = False,
    store: StoreOption = None,
    backend: BackendOption = None,
    wait_for_workers: WaitForWorkersOption = 0.0,
    nats_creds: NatsCreds = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Continue a run whose process died, or that was paused: finished tasks keep their
    results; unfinished ones run again (at-least-once). Exit 2 if another process drives it."""

    async def check() -> None:
        async with _open_store(store) as s:
            await _require_run(s, run_id)

    run_async(check())
    options = backend_options(wait_for_workers, nats_creds, tls_ca, tls_cert, tls_key)
    _resume_and_report(run_id, store, as_json, backend, options)


async def _approval_target(s: Any, run_id: str, stage: str) -> Any:
    """The pending approval ``approve RUN STAGE`` decides: the stage's own, or, for a
    workflow stage, the one its paused sub-run waits for. Exit 2 naming what waits otherwise."""
    pending = await s.pending_approvals(run_id)
    own = [p for p in pending if p.run_id == run_id and p.stage == stage]
    if own:
        return own[0]
    below = [p for p in pending if p.run_id.startswith(f"{run_id}:{stage}:")]
    if len(below) == 1:
        return below[0]
    waiting = ", ".join(
        repr(p.stage) if p.run_id == run_id else f"{p.stage!r} of sub-run {p.run_id}" for p in pending
    )
    if below:
        fail(
            f"stage {stage!r} of run {run_id} runs sub-runs waiting at several stages ({waiting}); "
            "approve one of them: workplex approve SUB_RUN_ID STAGE"
        )
    fail(
        f"stage {stage!r} of run {run_id} is not waiting for approval; "
        + (f"waiting: {waiting}" if pending else "no stage of this run waits for approval")
    )


async def _fail_rejected(s: Any, run_id: str, target: Any, who: str, comment: str | None, now: float) -> None:
    """A rejection of a paused run: the stage fails, and so does each run up to ``run_id``."""
    why = f"stage {target.stage!r} was rejected by {who}: {comment or 'no comment'}"
    rid, name = target.run_id, target.stage
    while True:
        await s.stage_update(rid, name, "failed", error=why, ended=now)
        await s.run_update(rid, "failed", error=f"stage {name!r} failed: {why}")
        if rid == run_id:
            return
        child = await s.get_run(rid)
        parent = child.parent_run_id if child is not None else None
        if not parent:
            return
        # A sub-run's id is "<parent>:<stage>:<index>:sub" (the workflow task's id + ":sub").
        name = rid[len(parent) + 1 :].removesuffix(":sub").rsplit(":", 1)[0]
        why = f"sub-run {rid} failed: {why}"
        rid = parent


@app.command("approve")
def approve(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The paused run.")],
    stage: Annotated[str, typer.Argument(metavar="STAGE", help="The stage waiting for approval.")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving.")] = False,
    comment: Annotated[str | None, typer.Option("--comment", "-m", metavar="TEXT", help="Why.")] = None,
    by: Annotated[
        str | None, typer.Option("--by", metavar="NAME", help="Who decides (default: $USER).")
    ] = None,
    resume_now: Annotated[
        bool, typer.Option("--resume", help="Resume the run here right after deciding.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --resume: JSON result.")] = False,
    store: StoreOption = None,
    backend: BackendOption = None,
    wait_for_workers: WaitForWorkersOption = 0.0,
    nats_creds: NatsCreds = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Approve (or --reject) a stage waiting for approval. A rejection fails the run with the
    comment recorded; an approval lets `workplex resume` (or --resume) continue it."""
    import getpass
    import time

    who = by or getpass.getuser()

    async def go() -> tuple[Any, Any, bool]:
        async with _open_store(store) as s:
            run = await _require_run(s, run_id)
            if stage not in run.stages:
                fail(f"run {run_id} has no stage {stage!r}; its stages: {', '.join(run.stages)}")
            if run.status in ("succeeded", "failed", "cancelled"):
                fail(f"run {run_id} has already {run.status}; it waits for no approval")
            target = await _approval_target(s, run_id, stage)
            allowed = await s.approvers(target.run_id, target.stage)
            if allowed and who not in allowed:
                # Refused before recording: a wrong decision would fail the later resume.
                fail(
                    f"stage {target.stage!r} of run {target.run_id} may be decided only by "
                    f"{', '.join(allowed)} (its approvers), not {who!r}; use --by NAME"
                )
            await s.set_approval(target.run_id, target.stage, not reject, comment, by=who)
            failed_now = False
            if reject and not resume_now and run.status == "paused":
                await _fail_rejected(s, run_id, target, who, comment, time.time())
                failed_now = True
            return run, target, failed_now

    run, target, failed_now = run_async(go())
    verb = "rejected" if reject else "approved"
    if not resume_now:
        where = f"stage {target.stage!r} of run {target.run_id}"
        if target.run_id != run_id:
            where = f"stage {target.stage!r} of sub-run {target.run_id} (stage {stage!r} of run {run_id})"
        typer.echo(f"{where} {verb} by {who}")
        if failed_now:
            typer.echo(f"run {run_id} failed: stage {stage!r} rejected" + (f" ({comment})" if comment else ""))
        elif run.status == "paused":
            typer.echo(f"continue it with: workplex resume {run_id}")
        else:
            # Someone drives the run now: the decision is read when the stage runs again.
            owner = f" (driven by {run.lease_owner})" if run.lease_owner else ""
            typer.echo(
                f"run {run_id} is {run.status}{owner}; the decision applies when the run "
                f"next pauses and is resumed: workplex resume {run_id}"
            )
        raise typer.Exit(EXIT_OK)
    options = backend_options(wait_for_workers, nats_creds, tls_ca, tls_cert, tls_key)
    _resume_and_report(run_id, store, as_json, backend, options)


@app.command("gc")
def gc(
    older_than: Annotated[
        str, typer.Option("--older-than", metavar="AGE", help="Age of finished runs to delete, e.g. 30d, 12h.")
    ],
    store: StoreOption = None,
) -> None:
    """Delete finished runs (succeeded, failed, cancelled) that ended longer ago than
    --older-than, with their stages, tasks, events and approvals."""
    seconds = parse_age(older_than)

    async def go() -> list[str]:
        async with _open_store(store) as s:
            deleted: list[str] = await s.gc(seconds)
            return deleted

    deleted = run_async(go())
    typer.echo(f"deleted {len(deleted)} run(s) that ended more than {older_than} ago")


def _cli_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """``name`` (Exit, Abort, ClickException) from typer's vendored click, typer itself and
    click, whichever are installed: typer 0.29 no longer depends on click."""
    import importlib

    found: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            kind = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(kind, type) and issubclass(kind, BaseException):
            found.append(kind)
    return tuple(found)


def main() -> None:
    """Console entry point: turns workplex's own errors into a message and exit code 2."""
    try:
        rc = app(standalone_mode=False)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _cli_exceptions("Exit")):
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, _cli_exceptions("ClickException")):
            exc.show()  # type: ignore[attr-defined]
            code = int(exc.exit_code)  # type: ignore[attr-defined]
            sys.exit(EXIT_BAD_INPUT if code in (1, 2) else code)
        if isinstance(exc, _cli_exceptions("Abort")):
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
