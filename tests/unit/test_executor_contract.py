"""The public API and the executor contract's data types."""

from __future__ import annotations

import importlib
import inspect

import pytest

import workplex
from workplex import Result, Task
from workplex import errors as errors_module
from workplex import executor as executor_module
from workplex.executor import Context, ErrorInfo, Metrics, Secrets, SecurityLevel
from workplex.executors.command import Command, CommandOutput


def test_all_names_resolve() -> None:
    for name in workplex.__all__:
        assert getattr(workplex, name) is not None, name
    assert sorted(workplex.__all__) == sorted(set(workplex.__all__))


def test_every_public_name_is_exported() -> None:
    exported = set(workplex.__all__)
    # the executor contract
    assert set(executor_module.__all__) <= exported
    # every error class a user may catch
    for name, obj in vars(errors_module).items():
        if inspect.isclass(obj) and issubclass(obj, errors_module.WorkplexError):
            assert name in exported, f"workplex.{name} is not exported"
    for name in ("Registry", "Config", "load_config", "__version__"):
        assert name in exported


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        workplex.NoSuchThing  # noqa: B018
    assert importlib.import_module("workplex").__version__ == workplex.__version__


def test_security_levels_are_ordered() -> None:
    safe, trusted, privileged = SecurityLevel.SAFE, SecurityLevel.TRUSTED, SecurityLevel.PRIVILEGED
    assert privileged.allows(safe) and privileged.allows(trusted) and privileged.allows(privileged)
    assert trusted.allows(safe) and not trusted.allows(privileged)
    assert not safe.allows(trusted)


def test_task_and_result_round_trip() -> None:
    task = Task("echo", {"a": 1}, metadata={"k": "v"})
    again = Task.from_dict(task.to_dict())
    assert (again.id, again.type, again.payload, again.metadata) == (
        task.id,
        "echo",
        {"a": 1},
        {"k": "v"},
    )
    assert Task("echo", {}).id != Task("echo", {}).id
    result = Result(
        False,
        None,
        ErrorInfo("PermanentError", "nope", False, {"x": 1}),
        exit_code=2,
        logs=["l"],
        metrics=Metrics(1.0, 2.0, 1.0, 3),
        metadata={"m": 1},
        task_id="t1",
    )
    back = Result.from_dict(result.to_dict())
    assert back.to_dict() == result.to_dict()


def test_failure_results_keep_the_retryable_flag() -> None:
    failed = Result.failure(errors_module.TaskTimeoutError("slow"), task_id="t")
    assert failed.error is not None
    assert (failed.error.type, failed.error.retryable) == ("TaskTimeoutError", True)
    failed = Result.failure(ValueError("odd"))
    assert failed.error is not None and failed.error.type == "ValueError"
    assert failed.error.retryable is False


def test_secrets_never_print_their_values() -> None:
    secrets = Secrets({"TOKEN": "s3cr3t"})
    assert "s3cr3t" not in repr(secrets)
    assert secrets.redact("auth s3cr3t here") == "auth *** here"


def test_command_output_carries_its_exit_code() -> None:
    out = CommandOutput(stdout="", stderr="", exit_code=7, pid=1, program="/bin/x", duration=0.0)
    assert Command().exit_code(out) == 7
    assert Command().exit_code({"exit_code": 7}) is None


def test_context_remaining() -> None:
    assert Context().remaining() is None
    assert Context(deadline=0.0).remaining() == 0.0
