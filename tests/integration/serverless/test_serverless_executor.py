"""The serverless executor against moto's Lambda emulator and local HTTPS-trigger stand-ins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workplex.executor import Result, Task
from workplex.registry import Registry

from .conftest import (
    ACCESS_KEY,
    AZURE_KEY,
    GCP_TOKEN,
    REGION,
    SECRET_KEY,
    FakeCloud,
    opened,
    queue_moto_results,
)

SECRETS = (GCP_TOKEN, AZURE_KEY, SECRET_KEY)


async def run(registry: Registry, payload: dict[str, Any]) -> Result:
    return await registry.execute(Task("serverless", payload))


def assert_no_secret(result: Result) -> None:
    text = json.dumps(result.to_dict())
    for secret in SECRETS:
        assert secret not in text


# ---- AWS Lambda through moto -----------------------------------------------------------
@pytest.mark.usefixtures("aws_env")
async def test_lambda_request_response_echoes_the_payload(
    moto_url: str, lambda_function: str
) -> None:
    async with opened({"aws": {"endpoint_url": moto_url, "region": REGION}}) as registry:
        event = {"order": 17, "lines": ["a", "b"]}
        by_name = await run(registry, {"function": "workplex-echo", "payload": event})
        assert by_name.success, by_name.error
        assert by_name.output["status_code"] == 200
        assert by_name.output["payload"] == event
        assert by_name.output["function_error"] is None

        by_arn = await run(registry, {"function": lambda_function, "payload": {"n": 1}})
        assert by_arn.success, by_arn.error
        assert by_arn.output["payload"] == {"n": 1}
        # One boto3 client serves every task for the same region/credentials/endpoint.
        assert len(registry.get("serverless")._lambda_clients) == 1  # type: ignore[attr-defined]


@pytest.mark.usefixtures("aws_env")
async def test_lambda_event_invocation_returns_202_without_payload(
    moto_url: str, lambda_function: str
) -> None:
    async with opened() as registry:
        result = await run(
            registry,
            {
                "function": "workplex-echo",
                "payload": {"fire": "and forget"},
                "invocation_type": "Event",
                "endpoint_url": moto_url,
                "region": REGION,
            },
        )
    assert result.success, result.error
    assert result.output["status_code"] == 202
    assert result.output["payload"] is None


@pytest.mark.usefixtures("aws_env")
async def test_lambda_canned_replies_from_moto(moto_url: str, lambda_function: str) -> None:
    queue_moto_results(moto_url, ['{"canned": 1}', "not json at all"])
    async with opened({"aws": {"endpoint_url": moto_url}}) as registry:
        first = await run(registry, {"function": "workplex-echo", "payload": {}})
        second = await run(registry, {"function": "workplex-echo", "payload": {}})
    assert first.output["payload"] == {"canned": 1}
    assert second.output["payload"] == "not json at all"


@pytest.mark.usefixtures("aws_env")
async def test_lambda_function_error_from_moto_fails_the_task(
    moto_url: str, lambda_function: str
) -> None:
    # moto's Docker-free Lambda reports a FunctionError for one case only: a reply above
    # the 6 MB payload limit. Queue such a reply.
    queue_moto_results(moto_url, ["x" * 6_100_000, "y" * 6_100_000])
    async with opened({"aws": {"endpoint_url": moto_url}}) as registry:
        failed = await run(registry, {"function": "workplex-echo", "payload": {}})
        assert not failed.success
        assert failed.error.type == "PermanentError"
        assert "Unhandled" in failed.error.message
        assert "payload size exceeded" in failed.error.message
        assert failed.error.details["function_error"] == "Unhandled"
        assert failed.error.details["error_type"] == "Function.ResponseSizeTooLarge"

        kept = await run(
            registry,
            {"function": "workplex-echo", "payload": {}, "fail_on_function_error": False},
        )
    assert kept.success, kept.error
    assert kept.output["function_error"] == "Unhandled"
    assert kept.output["payload"]["errorType"] == "Function.ResponseSizeTooLarge"


@pytest.mark.usefixtures("aws_env")
async def test_lambda_no_endpoint_answering_is_retryable() -> None:
    from .conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    async with opened({"aws": {"endpoint_url": url}}) as registry:
        result = await run(registry, {"function": "workplex-echo", "payload": {}})
    assert not result.success
    assert result.error.retryable
    assert result.error.type == "RetryableError"


# ---- AWS Lambda against a local Invoke-API server (paths moto cannot produce) ------------
@pytest.mark.usefixtures("aws_env")
async def test_lambda_handled_function_error_carries_its_message(fake_cloud: FakeCloud) -> None:
    async with opened({"aws": {"endpoint_url": fake_cloud.url}}) as registry:
        result = await run(registry, {"function": "fails", "payload": {"order": 17}})
    assert not result.success
    assert result.error.type == "PermanentError"
    assert "ValueError: order 17 has no lines" in result.error.message
    assert result.error.details["function_error"] == "Unhandled"
    assert result.error.details["executed_version"] == "$LATEST"


@pytest.mark.usefixtures("aws_env")
async def test_lambda_throttling_and_5xx_are_retryable(fake_cloud: FakeCloud) -> None:
    async with opened({"aws": {"endpoint_url": fake_cloud.url}}) as registry:
        throttled = await run(registry, {"function": "throttled", "payload": {}})
        broken = await run(registry, {"function": "broken", "payload": {}})
    assert throttled.error.type == "RetryableError"
    assert throttled.error.details["code"] == "TooManyRequestsException"
    assert throttled.error.details["status_code"] == 429
    assert broken.error.type == "RetryableError"
    assert broken.error.details["code"] == "ServiceException"
    # The client does not retry on its own: the retry overlay owns that decision.
    assert [r["path"].split("/")[3] for r in fake_cloud.requests] == ["throttled", "broken"]


@pytest.mark.usefixtures("aws_env")
async def test_lambda_unknown_function_is_permanent(fake_cloud: FakeCloud) -> None:
    # moto's Docker-free Lambda answers an invoke of any name, so the 404 comes from here.
    async with opened({"aws": {"endpoint_url": fake_cloud.url}}) as registry:
        result = await run(registry, {"function": "missing", "payload": {}})
    assert result.error.type == "PermanentError"
    assert result.error.details["code"] == "ResourceNotFoundException"
    assert "Function not found" in result.error.message


@pytest.mark.usefixtures("aws_env")
async def test_lambda_qualifier_log_tail_and_version(fake_cloud: FakeCloud) -> None:
    async with opened({"aws": {"endpoint_url": fake_cloud.url}}) as registry:
        result = await run(
            registry,
            {"function": "plain", "payload": {"a": 1}, "qualifier": "live", "log_tail": True},
        )
    assert result.success, result.error
    out = result.output
    assert out["payload"] == {"a": 1}
    assert out["executed_version"] == "7"
    assert out["log_result"] == "START\nline 1\nEND\n"
    sent = fake_cloud.requests[-1]
    assert sent["query"] == "Qualifier=live"
    assert sent["headers"]["x-amz-invocation-type"] == "RequestResponse"
    assert sent["headers"]["x-amz-log-type"] == "Tail"


@pytest.mark.usefixtures("aws_env")
async def test_lambda_credentials_from_secrets_are_used_and_never_shown(
    fake_cloud: FakeCloud,
) -> None:
    settings = {
        "credentials": {
            "prod": {
                "access_key_id": "$.secrets.AWS_KEY_ID",
                "secret_access_key": "$.secrets.AWS_SECRET",
                "region": "eu-west-1",
                "endpoint_url": fake_cloud.url,
            }
        }
    }
    secrets = {"AWS_KEY_ID": ACCESS_KEY, "AWS_SECRET": SECRET_KEY}
    async with opened(settings, secrets) as registry:
        ok = await run(registry, {"function": "plain", "payload": {}, "credentials": "prod"})
        assert ok.success, ok.error
        auth = fake_cloud.requests[-1]["headers"]["authorization"]
        assert f"Credential={ACCESS_KEY}/" in auth
        assert "/eu-west-1/lambda/" in auth
        assert_no_secret(ok)

        leaky = await run(registry, {"function": "leaky", "payload": {}, "credentials": "prod"})
        assert not leaky.success
        assert leaky.error.type == "PermanentError"
        assert "***" in leaky.error.message
        assert ACCESS_KEY not in leaky.error.message
        assert_no_secret(leaky)

        unknown = await run(
            registry,
            {
                "function": "plain",
                "payload": {},
                "credentials": {"access_key_id": "x", "secret_access_key": "$.secrets.MISSING"},
            },
        )
        assert unknown.error.type == "PermanentError"
        assert "MISSING" in unknown.error.message


@pytest.fixture
def aws_profile(aws_env: None, tmp_path: Path) -> str:
    """A profile ``emulator`` in the (temporary) shared credentials file."""
    (tmp_path / "aws-credentials").write_text(
        f"[emulator]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = {SECRET_KEY}\n"
    )
    return "emulator"


async def test_lambda_named_profile(fake_cloud: FakeCloud, aws_profile: str) -> None:
    async with opened({"aws": {"endpoint_url": fake_cloud.url, "region": REGION}}) as registry:
        ok = await run(registry, {"function": "plain", "payload": {}, "credentials": aws_profile})
        missing = await run(registry, {"function": "plain", "payload": {}, "credentials": "nope"})
    assert ok.success, ok.error
    assert "Credential=AKIDPROFILE/" in fake_cloud.requests[-1]["headers"]["authorization"]
    assert missing.error.type == "PermanentError"
    assert "credentials" in missing.error.message
    assert_no_secret(ok)
    assert_no_secret(missing)


# ---- GCP and Azure ---------------------------------------------------------------------
async def test_gcp_sends_the_identity_token(fake_cloud: FakeCloud) -> None:
    async with opened({"gcp": {"identity_token": GCP_TOKEN}}) as registry:
        ok = await run(
            registry,
            {"provider": "gcp", "function": f"{fake_cloud.url}/gcp/fn", "payload": {"q": 1}},
        )
        text = await run(registry, {"provider": "gcp", "function": f"{fake_cloud.url}/gcp/text"})
    assert ok.success, ok.error
    assert ok.output == {
        "status_code": 200,
        "payload": {"echo": {"q": 1}, "via": "gcp"},
        "function_error": None,
        "executed_version": None,
        "log_result": None,
    }
    assert text.output["payload"] == "plain words"
    assert fake_cloud.requests[0]["headers"]["authorization"] == f"Bearer {GCP_TOKEN}"
    assert_no_secret(ok)


async def test_gcp_token_from_the_environment(
    fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKPLEX_GCP_IDENTITY_TOKEN", GCP_TOKEN)
    async with opened() as registry:
        ok = await run(registry, {"provider": "gcp", "function": f"{fake_cloud.url}/gcp/fn"})
    assert ok.success, ok.error


async def test_gcp_wrong_or_missing_token_is_permanent(
    fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORKPLEX_GCP_IDENTITY_TOKEN", raising=False)
    url = f"{fake_cloud.url}/gcp/fn"
    async with opened({"gcp": {"identity_token": "wrong-token-abc"}}) as registry:
        wrong = await run(registry, {"provider": "gcp", "function": url})
    async with opened() as registry:
        missing = await run(registry, {"provider": "gcp", "function": url})
    assert wrong.error.type == "PermanentError"
    assert "401" in wrong.error.message
    assert "wrong-token-abc" not in json.dumps(wrong.to_dict())
    assert missing.error.type == "PermanentError"
    assert "WORKPLEX_GCP_IDENTITY_TOKEN" in missing.error.message
    assert len(fake_cloud.requests) == 1  # no request went out without a token


async def test_gcp_busy_is_retryable_and_crash_permanent_without_leaking(
    fake_cloud: FakeCloud,
) -> None:
    async with opened({"gcp": {"identity_token": GCP_TOKEN}}) as registry:
        busy = await run(registry, {"provider": "gcp", "function": f"{fake_cloud.url}/gcp/busy"})
        crash = await run(registry, {"provider": "gcp", "function": f"{fake_cloud.url}/gcp/crash"})
    assert busy.error.type == "RetryableError"
    assert busy.error.details["status_code"] == 503
    assert crash.error.type == "PermanentError"
    assert "crashed while holding Bearer ***" in crash.error.message
    assert_no_secret(busy)
    assert_no_secret(crash)


async def test_azure_sends_the_function_key(fake_cloud: FakeCloud) -> None:
    async with opened(
        {"credentials": {"orders": {"function_key": "$.secrets.AZ_KEY"}}}, {"AZ_KEY": AZURE_KEY}
    ) as registry:
        ok = await run(
            registry,
            {
                "provider": "azure",
                "function": f"{fake_cloud.url}/azure/api/orders?code=not-shown",
                "payload": {"id": 3},
                "credentials": "orders",
            },
        )
        wrong = await run(
            registry,
            {
                "provider": "azure",
                "function": f"{fake_cloud.url}/azure/api/orders?code=not-shown",
                "credentials": {"function_key": "bad-key-1234"},
            },
        )
    assert ok.success, ok.error
    assert ok.output["payload"] == {"echo": {"id": 3}, "via": "azure"}
    assert fake_cloud.requests[0]["headers"]["x-functions-key"] == AZURE_KEY
    assert wrong.error.type == "PermanentError"
    assert "403" in wrong.error.message
    dumped = json.dumps(wrong.to_dict())
    assert "bad-key-1234" not in dumped
    assert "not-shown" not in dumped  # the URL's query is left out of messages
    assert_no_secret(ok)


async def test_http_providers_refuse_bad_inputs(fake_cloud: FakeCloud) -> None:
    async with opened({"azure": {"function_key": AZURE_KEY}}) as registry:
        not_url = await run(registry, {"provider": "gcp", "function": "my-function"})
        event = await run(
            registry,
            {
                "provider": "azure",
                "function": f"{fake_cloud.url}/azure/x",
                "invocation_type": "Event",
            },
        )
        plain_http = await run(
            registry, {"provider": "azure", "function": "http://functions.example.com/api/x"}
        )
    assert not_url.error.type == "ValidationError"
    assert "function" in not_url.error.message
    assert event.error.type == "ValidationError"
    assert "invocation_type" in event.error.message
    assert plain_http.error.type == "PermanentError"
    assert "https" in plain_http.error.message
    assert fake_cloud.requests == []
