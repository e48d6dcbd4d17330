"""The serverless executor's health check: boto3 present, and with default AWS settings in
the config, credentials that resolve from local sources (no call to any cloud)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workplex.executor import Task

from .conftest import REGION, opened


async def health(settings: dict[str, Any]) -> bool:
    async with opened(settings) as registry:
        executor = await registry.start("serverless")
        return await executor.health_check()


@pytest.mark.usefixtures("aws_env")
async def test_without_aws_defaults_only_boto3_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No credentials anywhere, but nothing configured to use them by default either.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert await health({}) is True


@pytest.mark.usefixtures("aws_env")
async def test_default_region_with_credentials_from_the_environment() -> None:
    assert await health({"aws": {"region": REGION}}) is True


@pytest.mark.usefixtures("aws_env")
async def test_default_region_without_any_credentials_is_unhealthy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert await health({"aws": {"region": REGION}}) is False
    # Keys in the config itself are enough.
    keys = {"access_key_id": "AKIDHEALTH", "secret_access_key": "health-secret"}
    assert await health({"aws": {"region": REGION, **keys}}) is True


@pytest.mark.usefixtures("aws_env")
async def test_named_profile_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / "aws-credentials").write_text(
        "[reports]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n"
    )
    assert await health({"aws": {"endpoint_url": "http://127.0.0.1:1", "profile": "reports"}})
    assert not await health({"aws": {"endpoint_url": "http://127.0.0.1:1", "profile": "nope"}})


@pytest.mark.usefixtures("aws_env")
async def test_healthy_executor_invokes_through_moto(moto_url: str, lambda_function: str) -> None:
    settings = {"aws": {"region": REGION, "endpoint_url": moto_url}}
    async with opened(settings) as registry:
        assert (await registry.health(["serverless"]))["serverless"]["ok"] is True
        result = await registry.execute(
            Task("serverless", {"function": lambda_function, "payload": {"n": 1}})
        )
    assert result.success, result.error
    assert isinstance(result.output, dict)
    assert result.output["payload"] == {"n": 1}


def test_missing_boto3_is_reported_with_the_pip_command(tmp_path: Path) -> None:
    runner = (
        "import sys\nsys.modules['boto3'] = None\nfrom workplex.cli import main\n"
        "sys.argv = ['workplex', 'health', 'serverless', '--json']\nmain()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKPLEX_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    proc = subprocess.run(
        [sys.executable, "-c", runner],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)["serverless"]
    assert report["ok"] is False
    assert "pip install 'workplex[aws]'" in report["detail"]
