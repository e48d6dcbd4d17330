"""``docker``: runs a container from an image, or from a Dockerfile built on demand.

The Docker SDK (``pip install 'workplex[docker]'``) is imported on first use. The client
follows ``DOCKER_HOST`` (and ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH``) unless the config
names a ``base_url``. Every container this executor creates is removed when the task ends:
after a normal exit, on timeout and on cancellation.

An image built from a Dockerfile is tagged ``workplex-build:<hash>``, where the hash covers
the Dockerfile, every file of the build context not excluded by ``.dockerignore``, and the
build arguments. An unchanged build is therefore not built again (``built: false``).

The SDK blocks, so its calls run on threads; waiting for a container runs on the executor's
own pool so long containers never starve the event loop's default thread pool.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
import re
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from workplex.errors import (
    ExecutorError,
    MissingExtraError,
    PermanentError,
    RetryableError,
    TaskTimeoutError,
)
from workplex.executor import Capabilities, Context, Executor, ExecutorConfig, SecurityLevel

BUILD_REPOSITORY = "workplex-build"
"""Images built from a Dockerfile are tagged ``workplex-build:<content hash>``."""

LABEL_TASK = "workplex.task_id"
LABEL_RUN = "workplex.run_id"

PullPolicy = Literal["never", "missing", "always"]

_MEMORY_RE = re.compile(r"^[1-9][0-9]*[bkmg]?$", re.IGNORECASE)
_T = TypeVar("_T")


class Volume(BaseModel):
    """A host directory (absolute path) or a named volume mounted into the container."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        description="An absolute host path (bind mount) or the name of a Docker volume."
    )
    target: str = Field(description="The absolute path inside the container.")
    read_only: bool = False

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        if not v.startswith("/") and ("/" in v or v in {".", ".."}):
            raise ValueError("a host path must be absolute; a volume name has no '/'")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path inside the container")
        return v


class Resources(BaseModel):
    """Limits applied to the container by the engine's cgroups."""

    model_config = ConfigDict(extra="forbid")

    cpu_limit: float | None = Field(
        default=None, gt=0, description="CPUs the container may use, e.g. 0.5 or 2."
    )
    memory_limit: str | int | None = Field(
        default=None, description='Memory cap: bytes, or a number with b/k/m/g, e.g. "256m".'
    )
    pids_limit: int | None = Field(default=None, gt=0, description="Maximum processes.")

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str | int | None) -> str | int | None:
        if isinstance(v, int):
            if v <= 0:
                raise ValueError("must be a positive number of bytes")
        elif v is not None and not _MEMORY_RE.match(v.strip()):
            raise ValueError(f'{v!r} is not a size like "256m", "1g" or 1048576')
        return v.strip().lower() if isinstance(v, str) else v


# Other accepted spellings of input fields (the issue's `env` and `workdir`), as alias -> field.
_INPUT_ALIASES = {"env": "environment", "workdir": "working_dir"}


def _alias_schema(schema: dict[str, Any]) -> None:
    """Lists each alias in the JSON Schema as a property pointing back to its field, so an
    editor accepts both spellings while the schema stays one entry per meaning."""
    properties = schema.get("properties", {})
    for alias, field in _INPUT_ALIASES.items():
        if field in properties:
            entry = dict(properties[field])
            entry["title"] = alias
            entry["description"] = f"The same as `{field}` (give one of the two)."
            properties[alias] = entry


class DockerInput(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, json_schema_extra=_alias_schema
    )

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for alias, field in _INPUT_ALIASES.items():
                if alias in data and field in data:
                    raise ValueError(f"give `{field}` or its alias `{alias}`, not both")
        return data

    image: str | None = Field(default=None, description="The image to run, e.g. 'alpine:3.20'.")
    dockerfile_path: str | None = Field(
        default=None,
        description="A Dockerfile to build the image from (instead of `image`).",
    )
    build_context: str | None = Field(
        default=None, description="The build context directory; default: the Dockerfile's folder."
    )
    build_args: dict[str, str] = Field(default_factory=dict, description="Build-time ARG values.")
    command: list[str] | str | None = Field(
        default=None, description="The command (argv list, or a string split like a shell would)."
    )
    entrypoint: list[str] | str | None = Field(
        default=None, description="Overrides the image's entrypoint."
    )
    environment: dict[str, str] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("environment", "env"),
        description="Environment variables for the container (alias: `env`).",
    )
    volumes: list[Volume] = Field(default_factory=list)
    working_dir: str | None = Field(
        default=None,
        validation_alias=AliasChoices("working_dir", "workdir"),
        description="Working directory inside the container (alias: `workdir`).",
    )
    user: str | None = Field(default=None, description="User (name or uid[:gid]) to run as.")
    resources: Resources = Field(default_factory=Resources)
    network: str | None = Field(
        default=None,
        description="Network mode: none, host, bridge or a network name; default from the config.",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds; on expiry the container is killed and removed."
    )
    pull: PullPolicy | None = Field(
        default=None, description="never | missing | always; default from the config."
    )

    @model_validator(mode="after")
    def _source(self) -> DockerInput:
        if (self.image is None) == (self.dockerfile_path is None):
            raise ValueError("give exactly one of `image` or `dockerfile_path`")
        if self.image is not None and (self.build_context is not None or self.build_args):
            raise ValueError("`build_context` and `build_args` need `dockerfile_path`, not `image`")
        return self


class DockerOutput(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    image: str = Field(description="The image reference the container ran.")
    image_id: str = Field(description="The image's id (sha256:...).")
    container_id: str
    built: bool = Field(description="True when this task built the image from its Dockerfile.")


class DockerConfig(ExecutorConfig):
    base_url: str | None = Field(
        default=None,
        description="The engine's address (unix:///..., tcp://...); default: DOCKER_HOST.",
    )
    pull: PullPolicy = Field(
        default="missing", description="Pull policy when the task does not set one."
    )
    default_network: str = Field(default="none", description="Network mode by default.")
    max_output_bytes: int = Field(
        default=1_048_576, gt=0, description="Cap on each of stdout and stderr kept in the result."
    )
    allowed_images: list[str] | None = Field(
        default=None,
        description="Glob patterns an `image` must match (e.g. 'alpine:*'); unset: any image.",
    )
    allow_build: bool = Field(default=True, description="Whether `dockerfile_path` is allowed.")
    allowed_networks: list[str] | None = Field(
        default=None, description="Network modes a task may ask for; unset: any."
    )
    max_containers: int = Field(
        default=16, gt=0, description="Containers this executor runs at once; more wait their turn."
    )
    api_timeout: float = Field(
        default=60.0, gt=0, description="Seconds for ordinary engine API calls."
    )


def _docker_module() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise MissingExtraError("docker", "docker", "The docker executor") from exc
    return docker


def _ignore_patterns(context: Path) -> list[str]:
    """The context's ``.dockerignore`` patterns, read the way the SDK reads them."""
    try:
        text = (context / ".dockerignore").read_text()
    except FileNotFoundError:
        return []
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class _ContextHasher:
    """Content hash of a build, with file digests memoised by (size, mtime, inode)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[int, int, int], bytes]] = {}

    def _file_digest(self, path: str, st: os.stat_result) -> bytes:
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._files.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = h.digest()
        self._files[path] = (key, digest)
        return digest

    def digest(
        self,
        dockerfile: Path,
        context: Path,
        build_args: dict[str, str],
        exclude: Callable[[Path, list[str], str], set[str]],
    ) -> str:
        h = hashlib.sha256(b"workplex-build-v1\0")
        h.update(dockerfile.read_bytes())
        h.update(b"\0args\0")
        for key in sorted(build_args):
            h.update(f"{key}={build_args[key]}\0".encode())
        h.update(b"\0context\0")
        rel_dockerfile = os.path.relpath(dockerfile, context)
        for rel in sorted(exclude(context, _ignore_patterns(context), rel_dockerfile)):
            full = os.path.join(context, rel)
            st = os.lstat(full)
            # The mode matters: COPY keeps the executable bit.
            h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{st.st_mode & 0o7777}\0".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(self._file_digest(full, st))
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(full).encode())
        return h.hexdigest()[:32]


class Docker(Executor):
    name = "docker"
    description = "Runs a container from an image or a Dockerfile; returns exit code and output."
    security = SecurityLevel.PRIVILEGED
    capabilities = Capabilities(containers=True, filesystem=True, network=True)

    Input = DockerInput
    Output = DockerOutput
    Config = DockerConfig

    def __init__(self) -> None:
        super().__init__()
        self.config: DockerConfig = DockerConfig()
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None
        self._wait_pool: ThreadPoolExecutor | None = None
        self._hasher = _ContextHasher()
        self._build_locks: dict[str, asyncio.Lock] = {}
        self._known_builds: set[str] = set()
        self._cleanups: set[asyncio.Future[str | None]] = set()

    # ---- lifecycle ----------------------------------------------------------------
    async def startup(self, config: DockerConfig) -> None:
        self.config = config
        _docker_module()  # a missing extra is reported at start, not at the first container
        self._client_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(config.max_containers)
        self._wait_pool = ThreadPoolExecutor(
            max_workers=config.max_containers, thread_name_prefix="workplex-docker-wait"
        )

    async def shutdown(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
        if self._wait_pool is not None:
            self._wait_pool.shutdown(wait=False, cancel_futures=True)
            self._wait_pool = None

    async def health_check(self) -> bool:
        client = await self._get_client()
        try:
            return bool(await asyncio.to_thread(client.ping))
        except Exception as exc:
            raise self._translate(exc, "ping") from exc

    def exit_code(self, output: Any) -> int | None:
        return int(output.exit_code) if isinstance(output, DockerOutput) else None

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        if self._client_lock is None:
            raise PermanentError("the docker executor was not started")
        async with self._client_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._make_client)
        return self._client

    def _make_client(self) -> Any:
        docker = _docker_module()
        cfg = self.config
        # Keep enough pooled connections for every waiting container plus ordinary calls.
        pool = cfg.max_containers * 2 + 4
        where = cfg.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if where.startswith("unix://"):
            # Probe first: the SDK leaks its socket when a unix connect fails.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(cfg.api_timeout)
                try:
                    probe.connect(where[len("unix://") :])
                except OSError as exc:
                    raise RetryableError(
                        f"cannot reach the Docker engine at {where}: {exc.strerror or exc}"
                    ) from exc
        try:
            if cfg.base_url:
                return docker.DockerClient(
                    base_url=cfg.base_url, timeout=cfg.api_timeout, max_pool_size=pool
                )
            return docker.from_env(timeout=cfg.api_timeout, max_pool_size=pool)
        except docker.errors.DockerException as exc:
            raise RetryableError(f"cannot reach the Docker engine at {where}: {exc}") from exc

    # ---- errors -------------------------------------------------------------------
    @staticmethod
    def _translate(exc: Exception, stage: str, server_retryable: bool = True) -> ExecutorError:
        """Our error for a foreign one. ``server_retryable=False`` where the engine's 5xx
        answers mean a bad container spec (starting: unknown user, missing executable)."""
        if isinstance(exc, ExecutorError):
            return exc
        docker = _docker_module()
        errors = docker.errors
        if isinstance(exc, errors.APIError):
            detail = exc.explanation or str(exc)
            if exc.is_server_error() and server_retryable:
                return RetryableError(f"docker {stage}: engine error: {detail}")
            return PermanentError(f"docker {stage}: {detail}")
        # requests' connection errors are OSErrors.
        if isinstance(exc, errors.DockerException | OSError):
            return RetryableError(f"docker {stage}: cannot talk to the engine: {exc}")
        return PermanentError(f"docker {stage}: {type(exc).__name__}: {exc}")

    async def _call(self, stage: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            raise self._translate(exc, stage) from exc

    # ---- images -------------------------------------------------------------------
    def _check_image_allowed(self, image: str) -> None:
        allowed = self.config.allowed_images
        if allowed is not None and not any(fnmatch.fnmatchcase(image, p) for p in allowed):
            raise PermanentError(
                f"image: {image!r} is not allowed by executors.docker.allowed_images "
                f"({', '.join(allowed) or 'empty'})"
            )

    async def _build(self, client: Any, input: DockerInput) -> tuple[str, bool]:
        """Build (or find) the image of ``dockerfile_path``; returns (tag, built)."""
        if not self.config.allow_build:
            raise PermanentError(
                "dockerfile_path: building images is disabled (executors.docker.allow_build)"
            )
        docker = _docker_module()
        # Path checks and hashing touch the disk: off the event loop.
        dockerfile, context, digest = await asyncio.to_thread(self._prepare_build, input)
        tag = f"{BUILD_REPOSITORY}:{digest}"
        lock = self._build_locks.setdefault(digest, asyncio.Lock())
        async with lock:  # concurrent tasks with the same build wait for one build
            # A known tag skips the engine round trip; if the image was deleted since,
            # creating the container fails and `_create` builds again.
            if tag in self._known_builds or await self._image_exists(client, tag):
                self._known_builds.add(tag)
                return tag, False
            try:
                await asyncio.to_thread(
                    client.images.build,
                    path=str(context),
                    dockerfile=str(dockerfile),
                    buildargs=input.build_args or None,
                    tag=tag,
                    rm=True,
                    forcerm=True,
                    pull=self._pull_policy(input) == "always",
                    labels={"workplex.build-hash": digest},
                )
            except docker.errors.BuildError as exc:
                lines = [
                    str(item.get("stream") or item.get("error") or "").strip()
                    for item in exc.build_log
                    if isinstance(item, dict)
                ]
                tail = "\n".join(line for line in lines if line)[-2000:]
                raise PermanentError(
                    f"dockerfile_path: building {input.dockerfile_path} failed: {exc.msg}\n{tail}"
                ) from exc
            except Exception as exc:
                raise self._translate(exc, "build") from exc
            self._known_builds.add(tag)
        return tag, True

    def _prepare_build(self, input: DockerInput) -> tuple[Path, Path, str]:
        """Resolve the Dockerfile and context, and hash the build (runs on a thread)."""
        assert input.dockerfile_path is not None
        dockerfile = Path(input.dockerfile_path).resolve()
        context = Path(input.build_context).resolve() if input.build_context else dockerfile.parent
        if not dockerfile.is_file():
            raise PermanentError(f"dockerfile_path: {input.dockerfile_path!r} is not a file")
        if not context.is_dir():
            raise PermanentError(f"build_context: {input.build_context!r} is not a directory")
        exclude = _docker_module().utils.build.exclude_paths
        try:
            digest = self._hasher.digest(dockerfile, context, input.build_args, exclude)
        except OSError as exc:
            raise PermanentError(
                f"build_context: cannot read {exc.filename or context}: {exc.strerror}"
            ) from exc
        return dockerfile, context, digest

    async def _image_exists(self, client: Any, ref: str) -> bool:
        docker = _docker_module()
        try:
            await asyncio.to_thread(client.api.inspect_image, ref)
        except docker.errors.ImageNotFound:
            return False
        except Exception as exc:
            raise self._translate(exc, "inspect image") from exc
        return True

    async def _pull(self, client: Any, image: str) -> None:
        docker = _docker_module()
        try:
            await asyncio.to_thread(client.images.pull, image)
        except docker.errors.NotFound as exc:
            raise PermanentError(f"image: cannot pull {image!r}: {exc.explanation}") from exc
        except Exception as exc:
            raise self._translate(exc, f"pull {image}") from exc

    def _pull_policy(self, input: DockerInput) -> PullPolicy:
        return input.pull or self.config.pull

    # ---- containers ---------------------------------------------------------------
    def _create_kwargs(self, input: DockerInput, ctx: Context, network: str) -> dict[str, Any]:
        docker = _docker_module()
        mounts = [
            docker.types.Mount(
                target=v.target,
                source=v.source,
                type="bind" if v.source.startswith("/") else "volume",
                read_only=v.read_only,
            )
            for v in input.volumes
        ]
        res = input.resources
        labels = dict(input.labels)
        labels[LABEL_TASK] = ctx.task_id
        if ctx.run_id:
            labels[LABEL_RUN] = ctx.run_id
        kwargs: dict[str, Any] = {
            "command": input.command,
            "environment": input.environment or None,
            "mounts": mounts or None,
            "working_dir": input.working_dir,
            "network_mode": network,
            "labels": labels,
            "detach": True,
            "name": f"workplex-{uuid.uuid4().hex[:16]}",
        }
        if input.entrypoint is not None:
            kwargs["entrypoint"] = input.entrypoint
        if input.user is not None:
            kwargs["user"] = input.user
        if res.cpu_limit is not None:
            kwargs["nano_cpus"] = round(res.cpu_limit * 1e9)
        if res.memory_limit is not None:
            kwargs["mem_limit"] = res.memory_limit
        if res.pids_limit is not None:
            kwargs["pids_limit"] = res.pids_limit
        return kwargs

    def _remove_soon(self, client: Any, ref: str) -> asyncio.Future[str | None]:
        """Kill and remove a container on a thread; tracked so shutdown waits for it.

        The future's value is None, or why the removal failed (it never raises, so a
        failed removal cannot hide the task's own outcome).
        """
        docker = _docker_module()

        def remove() -> str | None:
            try:
                client.api.remove_container(ref, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                # 409 "removal already in progress" is fine: it is going away.
                if exc.status_code != 409:
                    return str(exc.explanation or exc)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            return None

        fut = asyncio.ensure_future(asyncio.to_thread(remove))
        self._cleanups.add(fut)
        fut.add_done_callback(self._cleanups.discard)
        return fut

    def _read_logs(self, client: Any, container_id: str, which: str) -> tuple[str, bool]:
        """One stream of the container's output, capped at ``max_output_bytes``."""
        cap = self.config.max_output_bytes
        kept = bytearray()
        truncated = False
        chunks: Iterator[bytes] = client.api.logs(
            container_id, stdout=which == "stdout", stderr=which == "stderr", stream=True
        )
        # Read to the end (so the connection is released) but keep only the cap.
        for chunk in chunks:
            room = cap - len(kept)
            if room > 0:
                kept += chunk[:room]
            if len(chunk) > room:
                truncated = True
        return kept.decode("utf-8", errors="replace"), truncated

    async def execute(self, input: DockerInput, ctx: Context) -> DockerOutput:
        network = input.network or self.config.default_network
        allowed_networks = self.config.allowed_networks
        if allowed_networks is not None and network not in allowed_networks:
            raise PermanentError(
                f"network: {network!r} is not allowed by executors.docker.allowed_networks "
                f"({', '.join(allowed_networks) or 'empty'})"
            )
        if input.image is not None:
            self._check_image_allowed(input.image)
        client = await self._get_client()
        built = False
        if input.image is not None:
            image = input.image
            if self._pull_policy(input) == "always":
                await self._pull(client, image)
        else:
            image, built = await self._build(client, input)

        limit = input.timeout
        remaining = ctx.remaining()
        if remaining is not None:
            limit = remaining if limit is None else min(limit, remaining)

        assert self._slots is not None and self._wait_pool is not None
        async with self._slots:
            container, rebuilt = await self._create(client, image, input, ctx, network)
            built = built or rebuilt
            try:
                return await self._run(client, container, image, built, limit)
            finally:
                # Also on timeout and cancellation; shielded so a second cancel cannot skip it.
                problem = await asyncio.shield(self._remove_soon(client, container.id))
                if problem:
                    ctx.logger.warning(
                        "docker container not removed", container=container.id, reason=problem
                    )

    async def _create(
        self, client: Any, image: str, input: DockerInput, ctx: Context, network: str
    ) -> tuple[Any, bool]:
        """Create the container; returns it and whether its image had to be built again."""
        docker = _docker_module()
        kwargs = self._create_kwargs(input, ctx, network)
        rebuilt = False
        policy = self._pull_policy(input)
        for attempt in (1, 2):
            create = asyncio.ensure_future(
                asyncio.to_thread(client.containers.create, image, **kwargs)
            )
            try:
                # The create finishes on its thread even if this task is cancelled meanwhile.
                return await asyncio.shield(create), rebuilt
            except asyncio.CancelledError:
                create.add_done_callback(
                    lambda f: (
                        None
                        if f.cancelled() or f.exception()
                        else self._remove_soon(client, f.result().id)
                    )
                )
                raise
            except docker.errors.ImageNotFound as exc:
                if input.dockerfile_path is not None and attempt == 1:
                    # The cached build was deleted from the engine: build it again.
                    self._known_builds.discard(image)
                    image, rebuilt = await self._build(client, input)
                    continue
                if policy == "missing" and attempt == 1:
                    await self._pull(client, image)
                    continue
                raise PermanentError(
                    f"image: {image!r} is not present on the Docker engine and the pull policy "
                    f"is {policy!r} (set `pull` in the task or executors.docker.pull, or build "
                    f"or load the image first)"
                ) from exc
            except Exception as exc:
                raise self._translate(exc, "create container") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(
        self, client: Any, container: Any, image: str, built: bool, limit: float | None
    ) -> DockerOutput:
        try:
            await asyncio.to_thread(container.start)
        except Exception as exc:
            raise self._translate(exc, "start container", server_retryable=False) from exc
        loop = asyncio.get_running_loop()
        wait = loop.run_in_executor(self._wait_pool, container.wait)
        try:
            status = await asyncio.wait_for(wait, limit)
        except TimeoutError as exc:
            raise TaskTimeoutError(
                f"timeout: container {container.id[:12]} ({image}) ran longer than "
                f"{limit:g}s; it was killed and removed"
            ) from exc
        except Exception as exc:
            raise self._translate(exc, "wait for container") from exc
        stdout, out_cut = await self._call(
            "read logs", self._read_logs, client, container.id, "stdout"
        )
        stderr, err_cut = await self._call(
            "read logs", self._read_logs, client, container.id, "stderr"
        )
        if status.get("Error"):
            raise RetryableError(f"docker wait: {status['Error'].get('Message', status['Error'])}")
        return DockerOutput(
            exit_code=int(status.get("StatusCode", -1)),
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=out_cut,
            stderr_truncated=err_cut,
            image=image,
            image_id=str(container.attrs.get("Image", "")),
            container_id=container.id,
            built=built,
        )
