"""``serverless``: invoke a function on AWS Lambda, Google Cloud Functions or Azure Functions.

- ``aws``: the Lambda ``Invoke`` API through boto3. One client per (region, credentials,
  endpoint), created on first use and reused; boto3 is blocking, so calls run on a thread.
- ``gcp``: the function's HTTPS trigger URL with ``Authorization: Bearer <identity token>``.
- ``azure``: the function's HTTPS URL with the ``x-functions-key`` header.

Credentials are secrets: they are never logged, never part of a result, and redacted from
error messages. A pipeline names a credential set from the config (or an AWS profile), or
passes values resolved from ``$.secrets``; raw keys do not belong in pipeline files.
A config value written as ``$.secrets.NAME`` is looked up in the task's secrets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, model_validator

from workplex.errors import (
    ExecutorError,
    MissingExtraError,
    PermanentError,
    RetryableError,
    TaskTimeoutError,
)
from workplex.executor import Capabilities, Context, Executor, ExecutorConfig, SecurityLevel

GCP_TOKEN_ENV = "WORKPLEX_GCP_IDENTITY_TOKEN"
AZURE_KEY_ENV = "WORKPLEX_AZURE_FUNCTION_KEY"
_SECRET_REF = "$.secrets."
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_RETRYABLE_AWS = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "ServiceException",
        "ResourceConflictException",
        "ResourceNotReadyException",
        "EC2ThrottledException",
        "ENILimitReachedException",
        "SubnetIPAddressLimitReachedException",
    }
)
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class Credentials(BaseModel):
    """A credential set: AWS keys or profile, a GCP identity token, or an Azure function key."""

    model_config = {"extra": "forbid", "frozen": True}

    profile: str | None = Field(default=None, description="AWS: a profile of ~/.aws/config.")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    region: str | None = Field(default=None, description="AWS: default region for this set.")
    endpoint_url: str | None = Field(default=None, description="AWS: e.g. a local emulator.")
    identity_token: SecretStr | None = Field(default=None, description="GCP: identity token.")
    function_key: SecretStr | None = Field(default=None, description="Azure: function key.")


class AwsSettings(Credentials):
    """The ``aws`` block of the config: defaults for every Lambda call."""


class GcpSettings(BaseModel):
    model_config = {"extra": "forbid"}
    identity_token: SecretStr | None = None


class AzureSettings(BaseModel):
    model_config = {"extra": "forbid"}
    function_key: SecretStr | None = None


class ServerlessInput(BaseModel):
    model_config = {"extra": "forbid"}

    provider: Literal["aws", "gcp", "azure"] = "aws"
    function: str = Field(
        min_length=1,
        description="AWS: function name or ARN. GCP/Azure: the function's HTTPS trigger URL.",
    )
    payload: Any = Field(default=None, description="The JSON event passed to the function.")
    region: str | None = Field(default=None, description="AWS region (default from config/env).")
    invocation_type: Literal["RequestResponse", "Event"] = Field(
        default="RequestResponse",
        description="AWS: wait for the result, or queue the event and return 202.",
    )
    qualifier: str | None = Field(default=None, description="AWS: version or alias.")
    credentials: str | Credentials | None = Field(
        default=None,
        description=(
            "A credential set named in the config, an AWS profile name, or values "
            "resolved from $.secrets. Default: the config's provider block, then the "
            "standard chain (AWS) or the environment (GCP, Azure)."
        ),
    )
    endpoint_url: str | None = Field(default=None, description="AWS: API endpoint (emulators).")
    timeout: float | None = Field(default=None, gt=0, description="Seconds before giving up.")
    log_tail: bool = Field(
        default=False, description="AWS: return the last 4 KB of the function's log."
    )
    fail_on_function_error: bool = Field(
        default=True,
        description="A function's own error fails the task; false returns it in the output.",
    )
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        default="POST", description="GCP/Azure: HTTP method of the trigger call."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="GCP/Azure: extra headers.")

    @model_validator(mode="after")
    def _provider_fields(self) -> ServerlessInput:
        if self.provider != "aws":
            if self.invocation_type != "RequestResponse":
                raise ValueError(
                    f"invocation_type: 'Event' is only for provider 'aws', not {self.provider!r}"
                )
            if urlsplit(self.function).scheme not in ("http", "https"):
                raise ValueError(
                    f"function: provider {self.provider!r} needs the HTTPS trigger URL"
                )
        return self


class ServerlessOutput(BaseModel):
    status_code: int
    payload: Any = Field(default=None, description="The reply, parsed as JSON when it is JSON.")
    function_error: str | None = Field(
        default=None,
        description="The function's own error kind (only with fail_on_function_error: false).",
    )
    executed_version: str | None = None
    log_result: str | None = Field(default=None, description="Log tail (AWS, log_tail: true).")


class ServerlessConfig(ExecutorConfig):
    aws: AwsSettings = Field(default_factory=AwsSettings)
    gcp: GcpSettings = Field(default_factory=GcpSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)
    credentials: dict[str, Credentials] = Field(
        default_factory=dict, description="Named credential sets tasks refer to by name."
    )
    timeout_seconds: float = Field(default=60.0, gt=0)
    allow_http: bool = Field(
        default=False,
        description="Allow plain http:// trigger URLs to other hosts than loopback.",
    )
    max_connections: int = Field(default=64, gt=0)
    health_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Bound on the health check's credential lookup."
    )
    health_check_metadata: bool = Field(
        default=False,
        description=(
            "Let the health check ask the EC2/ECS metadata services for credentials (network); "
            "false: only local sources (environment, files, profiles) are consulted."
        ),
    )


class Serverless(Executor):
    name = "serverless"
    description = (
        "Invokes AWS Lambda (boto3), Google Cloud Functions and Azure Functions (HTTPS trigger "
        "with their auth headers); sync and async invocation."
    )
    security = SecurityLevel.PRIVILEGED
    capabilities = Capabilities(network=True)

    Input = ServerlessInput
    Output = ServerlessOutput
    Config = ServerlessConfig

    def __init__(self) -> None:
        super().__init__()
        self._lambda_clients: dict[tuple[Any, ...], Any] = {}
        self._client_lock: asyncio.Lock | None = None
        self._http: Any = None

    async def health_check(self) -> bool:
        """boto3 imports; with a default AWS region or endpoint in the config, credentials
        resolve for it too. No call to any cloud: local credential sources only, unless
        ``health_check_metadata`` allows the metadata services, within
        ``health_timeout_seconds``."""
        try:
            import boto3  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError(
                "aws", "boto3", "the serverless executor (provider aws)"
            ) from exc
        cfg: ServerlessConfig = self.config
        if cfg.aws.region is None and cfg.aws.endpoint_url is None:
            return True
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(_credentials_resolve, cfg.aws, cfg.health_check_metadata),
                cfg.health_timeout_seconds,
            )
        except TimeoutError:
            return False

    async def shutdown(self) -> None:
        clients, self._lambda_clients = list(self._lambda_clients.values()), {}
        for client in clients:
            client.close()
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    # ---- credentials -------------------------------------------------------------------
    def _credentials(self, input: ServerlessInput) -> Credentials:
        """The credential set for this task: named, inline, or the provider's config block."""
        given = input.credentials
        if isinstance(given, Credentials):
            return given
        cfg: ServerlessConfig = self.config
        if isinstance(given, str):
            named = cfg.credentials.get(given)
            if named is not None:
                return named
            if input.provider == "aws":
                # Not a configured set: an AWS profile name, with the config's other defaults.
                return cfg.aws.model_copy(update={"profile": given})
            known = ", ".join(sorted(cfg.credentials)) or "(none)"
            raise PermanentError(
                f"credentials: no credential set {given!r} in the config; known: {known}",
                details={"field": "credentials"},
            )
        if input.provider == "aws":
            return cfg.aws
        if input.provider == "gcp":
            return Credentials(identity_token=cfg.gcp.identity_token)
        return Credentials(function_key=cfg.azure.function_key)

    # ---- aws ---------------------------------------------------------------------------
    async def _lambda_client(
        self, region: str | None, creds: Credentials, endpoint: str | None
    ) -> Any:
        key = (
            region,
            creds.profile,
            endpoint,
            _reveal(creds.access_key_id),
            _reveal(creds.secret_access_key),
            _reveal(creds.session_token),
        )
        client = self._lambda_clients.get(key)
        if client is not None:
            return client
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            client = self._lambda_clients.get(key)
            if client is None:
                client = await asyncio.to_thread(self._make_client, region, creds, endpoint)
                self._lambda_clients[key] = client
        return client

    def _make_client(self, region: str | None, creds: Credentials, endpoint: str | None) -> Any:
        try:
            import boto3
            from botocore.config import Config as BotoConfig
            from botocore.exceptions import BotoCoreError
        except ImportError as exc:
            raise MissingExtraError(
                "aws", "boto3", "the serverless executor (provider aws)"
            ) from exc
        cfg: ServerlessConfig = self.config
        try:
            session = boto3.session.Session(
                profile_name=creds.profile,
                aws_access_key_id=_reveal(creds.access_key_id),
                aws_secret_access_key=_reveal(creds.secret_access_key),
                aws_session_token=_reveal(creds.session_token),
            )
            return session.client(
                "lambda",
                region_name=region,
                endpoint_url=endpoint,
                config=BotoConfig(
                    # Retries belong to the retry overlay, not hidden inside the client.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    read_timeout=cfg.timeout_seconds,
                    connect_timeout=min(cfg.timeout_seconds, 10.0),
                    max_pool_connections=cfg.max_connections,
                ),
            )
        except BotoCoreError as exc:
            name = type(exc).__name__
            if name == "NoRegionError":
                raise PermanentError(
                    "region: no AWS region given (input `region`, a function ARN, the config's "
                    "aws.region, or AWS_DEFAULT_REGION)",
                    details={"field": "region"},
                ) from exc
            raise PermanentError(
                f"credentials: {name}: {exc}", details={"field": "credentials"}
            ) from exc

    async def _invoke_aws(
        self, input: ServerlessInput, ctx: Context, creds: Credentials, secrets: list[str]
    ) -> ServerlessOutput:
        cfg: ServerlessConfig = self.config
        region = input.region or _arn_region(input.function) or creds.region or cfg.aws.region
        endpoint = input.endpoint_url or creds.endpoint_url or cfg.aws.endpoint_url
        client = await self._lambda_client(region, creds, endpoint)
        kwargs: dict[str, Any] = {
            "FunctionName": input.function,
            "InvocationType": input.invocation_type,
            "Payload": json.dumps(input.payload).encode(),
        }
        if input.qualifier:
            kwargs["Qualifier"] = input.qualifier
        if input.log_tail and input.invocation_type == "RequestResponse":
            kwargs["LogType"] = "Tail"

        def invoke() -> dict[str, Any]:
            response: dict[str, Any] = client.invoke(**kwargs)
            body = response.get("Payload")
            response["Payload"] = body.read() if body is not None else b""
            return response

        timeout = _timeout(input.timeout, cfg.timeout_seconds, ctx)
        try:
            # The thread cannot be interrupted; on timeout the task ends and the reply is dropped.
            response = await asyncio.wait_for(asyncio.to_thread(invoke), timeout)
        except TimeoutError as exc:
            raise TaskTimeoutError(
                f"lambda {input.function}: no reply within {timeout:g}s",
                details={"function": input.function},
            ) from exc
        except Exception as exc:
            raise _aws_error(exc, input.function, secrets) from exc

        status = int(response.get("StatusCode", 0))
        raw: bytes = response["Payload"]
        payload = None if input.invocation_type == "Event" else _parse(raw)
        function_error = response.get("FunctionError")
        log_result = None
        if response.get("LogResult"):
            log_result = base64.b64decode(response["LogResult"]).decode("utf-8", "replace")
        if function_error and input.fail_on_function_error:
            message = _function_error_message(payload)
            error_type = payload.get("errorType") if isinstance(payload, dict) else None
            raise PermanentError(
                _redact(
                    f"lambda {input.function} failed ({function_error}): {message}", secrets, ctx
                ),
                details={
                    "function_error": function_error,
                    "error_type": error_type,
                    "status_code": status,
                    "executed_version": response.get("ExecutedVersion"),
                },
            )
        return ServerlessOutput(
            status_code=status,
            payload=payload,
            function_error=function_error,
            executed_version=response.get("ExecutedVersion"),
            log_result=log_result,
        )

    # ---- gcp / azure -------------------------------------------------------------------
    def _http_client(self) -> Any:
        if self._http is None:
            try:
                import httpx
            except ImportError as exc:
                raise MissingExtraError(
                    "http", "httpx", "the serverless executor (gcp, azure)"
                ) from exc
            n = self.config.max_connections
            self._http = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                follow_redirects=False,
            )
        return self._http

    async def _invoke_http(
        self, input: ServerlessInput, ctx: Context, creds: Credentials, secrets: list[str]
    ) -> ServerlessOutput:
        import httpx

        cfg: ServerlessConfig = self.config
        url = input.function
        parts = urlsplit(url)
        shown = urlunsplit(
            (parts.scheme, parts.netloc, parts.path, "", "")
        )  # no query: keys live there
        if parts.scheme == "http" and not cfg.allow_http and parts.hostname not in _LOOPBACK:
            raise PermanentError(
                f"function: {shown} is plain http; credentials go only over https "
                "(or set allow_http in the config)",
                details={"field": "function"},
            )
        headers = dict(input.headers)
        if input.provider == "gcp":
            token = _reveal(creds.identity_token) or os.environ.get(GCP_TOKEN_ENV)
            if not token:
                raise PermanentError(
                    f"credentials: no GCP identity token (config gcp.identity_token, a credential "
                    f"set, or {GCP_TOKEN_ENV})",
                    details={"field": "credentials"},
                )
            headers["Authorization"] = f"Bearer {token}"
        else:
            key = _reveal(creds.function_key) or os.environ.get(AZURE_KEY_ENV)
            if not key:
                raise PermanentError(
                    f"credentials: no Azure function key (config azure.function_key, a credential "
                    f"set, or {AZURE_KEY_ENV})",
                    details={"field": "credentials"},
                )
            headers["x-functions-key"] = key
        secrets = [*secrets, *(v for v in _env_secrets() if v)]
        client = self._http_client()
        timeout = _timeout(input.timeout, cfg.timeout_seconds, ctx)
        body = None if input.method == "GET" else input.payload
        try:
            response = await client.request(
                input.method, url, json=body, headers=headers, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise TaskTimeoutError(
                f"{input.provider} function {shown}: no reply within {timeout:g}s"
            ) from exc
        except httpx.TransportError as exc:
            raise RetryableError(
                _redact(
                    f"{input.provider} function {shown}: {type(exc).__name__}: {exc}", secrets, ctx
                )
            ) from exc
        status = response.status_code
        payload = _parse(response.content)
        if status >= 400:
            text = response.text[:500]
            details = {"status_code": status, "url": shown}
            message = _redact(
                f"{input.provider} function {shown} answered {status}: {text}", secrets, ctx
            )
            if status in (401, 403):
                raise PermanentError(
                    f"{input.provider} function {shown} refused the credentials ({status})",
                    details=details,
                )
            if status in _RETRYABLE_HTTP:
                raise RetryableError(
                    message, details=details, retry_after=_retry_after(response.headers)
                )
            raise PermanentError(message, details=details)
        return ServerlessOutput(status_code=status, payload=payload)

    # ---- entry -------------------------------------------------------------------------
    async def execute(self, input: ServerlessInput, ctx: Context) -> ServerlessOutput:
        creds = _resolve_refs(self._credentials(input), ctx)
        secrets = _secret_values(creds)
        try:
            if input.provider == "aws":
                return await self._invoke_aws(input, ctx, creds, secrets)
            return await self._invoke_http(input, ctx, creds, secrets)
        except ExecutorError as exc:
            # Last line of defence: no secret value leaves in a message.
            text = str(exc)
            clean = _redact(text, secrets, ctx)
            if clean != text:
                exc.args = (clean,)
            raise


# ---- helpers ---------------------------------------------------------------------------
def _credentials_resolve(aws: Credentials, metadata: bool) -> bool:
    """Whether the config's AWS credentials (keys, profile, or the standard chain) resolve."""
    if aws.access_key_id is not None and aws.secret_access_key is not None:
        return True  # given outright (perhaps as $.secrets references, checked per task)
    import botocore.session
    from botocore.exceptions import BotoCoreError

    try:
        session = botocore.session.Session(profile=aws.profile)
        resolver = session.get_component("credential_provider")
        if not metadata:
            # These two ask a metadata service over the network.
            for method in ("container-role", "iam-role"):
                resolver.remove(method)  # a no-op when absent
        return resolver.load_credentials() is not None
    except BotoCoreError:
        return False


def _reveal(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _resolve_refs(creds: Credentials, ctx: Context) -> Credentials:
    """Values written as ``$.secrets.NAME`` replaced by the task's secret of that name."""
    update: dict[str, Any] = {}
    for field in (
        "access_key_id",
        "secret_access_key",
        "session_token",
        "identity_token",
        "function_key",
    ):
        value = _reveal(getattr(creds, field))
        if value and value.startswith(_SECRET_REF):
            name = value[len(_SECRET_REF) :]
            if name not in ctx.secrets:
                raise PermanentError(
                    f"credentials: {field} refers to secret {name!r}, which is not defined",
                    details={"field": "credentials"},
                )
            update[field] = SecretStr(ctx.secrets[name])
    return creds.model_copy(update=update) if update else creds


def _secret_values(creds: Credentials) -> list[str]:
    values = [
        _reveal(creds.access_key_id),
        _reveal(creds.secret_access_key),
        _reveal(creds.session_token),
        _reveal(creds.identity_token),
        _reveal(creds.function_key),
    ]
    return [v for v in values if v]


def _env_secrets() -> list[str | None]:
    return [os.environ.get(GCP_TOKEN_ENV), os.environ.get(AZURE_KEY_ENV)]


def _redact(text: str, secrets: list[str], ctx: Context) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, "***")
    return ctx.secrets.redact(text)


def _timeout(given: float | None, default: float, ctx: Context) -> float:
    timeout = given if given is not None else default
    remaining = ctx.remaining()
    return timeout if remaining is None else min(timeout, remaining)


def _arn_region(function: str) -> str | None:
    # arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
    if function.startswith("arn:"):
        parts = function.split(":")
        if len(parts) > 3 and parts[3]:
            return parts[3]
    return None


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _function_error_message(payload: Any) -> str:
    if isinstance(payload, dict):
        kind = payload.get("errorType")
        text = payload.get("errorMessage")
        if text is not None:
            return f"{kind}: {text}" if kind else str(text)
        return json.dumps(payload)[:1000]
    return str(payload)[:1000] if payload is not None else "(no payload)"


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _aws_error(exc: Exception, function: str, secrets: list[str]) -> ExecutorError:
    """A botocore exception as our typed error (retryable for throttling, 5xx, network)."""
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = str(response["Error"].get("Code", name))
        text = str(response["Error"].get("Message", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        details: dict[str, Any] = {"code": code, "status_code": status, "function": function}
        message = f"lambda {function}: {code} ({status}): {text}"
        for value in secrets:
            message = message.replace(value, "***")
        if code in _RETRYABLE_AWS or status == 429 or status >= 500:
            return RetryableError(message, details=details)
        return PermanentError(message, details=details)
    message = f"lambda {function}: {name}: {exc}"
    for value in secrets:
        message = message.replace(value, "***")
    if name in ("ReadTimeoutError", "ConnectTimeoutError"):
        return TaskTimeoutError(message, details={"function": function})
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ProxyConnectionError"):
        return RetryableError(message, details={"function": function})
    if name in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
        return PermanentError(f"credentials: {message}", details={"field": "credentials"})
    if isinstance(exc, ExecutorError):
        return exc
    return PermanentError(message, details={"function": function})
