"""Every pipeline in examples/ runs with the real `workplex run` and gives the expected outputs."""

from __future__ import annotations

import platform
from pathlib import Path

from .conftest import EXAMPLES, Workplex


def test_every_example_has_a_test() -> None:
    tested = {"quickstart", "document-processing", "broadcast", "fork-join", "conditional"}
    assert {p.stem for p in EXAMPLES.glob("*.yaml")} == tested


def test_quickstart(workplex: Workplex) -> None:
    done = workplex("run", str(EXAMPLES / "quickstart.yaml"), "--json", "--no-store")
    assert done.code == 0, done.stderr
    data = done.json
    assert data["status"] == "succeeded"
    assert data["stages"]["hello"]["output"]["stdout"] == "hello from workplex\n"
    assert [o["stdout"] for o in data["stages"]["shout"]["output"]] == [
        "ALPHA",
        "BETA",
        "GAMMA",
        "ALPHA",
    ]
    counts = data["stages"]["count"]["output"]
    assert [(c["word"], c["times"]) for c in counts] == [
        ("ALPHA", 2),
        ("BETA", 1),
        ("GAMMA", 1),
    ]


def test_quickstart_with_words_given_on_the_command_line(workplex: Workplex) -> None:
    done = workplex(
        "run",
        str(EXAMPLES / "quickstart.yaml"),
        "--input",
        'words=["one","two","one"]',
        "--json",
        "--no-store",
    )
    assert done.code == 0, done.stderr
    counts = done.json["stages"]["count"]["output"]
    assert [(c["word"], c["times"]) for c in counts] == [("ONE", 2), ("TWO", 1)]


def test_document_processing(workplex: Workplex) -> None:
    done = workplex(
        "run",
        str(EXAMPLES / "document-processing.yaml"),
        "--json",
        "--no-store",
        env={"PYTHONPATH": str(EXAMPLES)},
    )
    assert done.code == 0, done.stderr
    stages = done.json["stages"]
    parsed = stages["process-files"]["output"]
    assert [p["path"] for p in parsed] == [
        "data/invoice-1001.txt",
        "data/letter-q3.txt",
        "data/invoice-1002.txt",
        "data/receipt-7.txt",
    ]
    words = {
        p: len((EXAMPLES / p).read_text().split())
        for p in (
            "data/invoice-1001.txt",
            "data/letter-q3.txt",
            "data/invoice-1002.txt",
            "data/receipt-7.txt",
        )
    }
    assert [p["words"] for p in parsed] == list(words.values())
    assert stages["consolidate"]["output"] == [
        {
            "documentType": "invoice",
            "documents": 2,
            "words": words["data/invoice-1001.txt"] + words["data/invoice-1002.txt"],
        },
        {"documentType": "letter", "documents": 1, "words": words["data/letter-q3.txt"]},
        {"documentType": "receipt", "documents": 1, "words": words["data/receipt-7.txt"]},
    ]


def test_broadcast(workplex: Workplex) -> None:
    done = workplex("run", str(EXAMPLES / "broadcast.yaml"), "--json", "--no-store")
    assert done.code == 0, done.stderr
    assert done.json["stages"]["ask-everyone"]["output"] == {
        "echo": {"function": "platform:python_version"},
        "python": platform.python_version(),
    }


def test_fork_join(workplex: Workplex) -> None:
    done = workplex("run", str(EXAMPLES / "fork-join.yaml"), "--json", "--no-store")
    assert done.code == 0, done.stderr
    stages = done.json["stages"]
    assert set(stages["facts"]["output"]) == {"kernel", "python", "label"}
    assert stages["report"]["output"] == {
        "kernel": platform.system() + "\n",
        "python": platform.python_version(),
        "label": "collected in parallel",
    }


def test_conditional_skips_and_runs_deploy(workplex: Workplex, tmp_path: Path) -> None:
    skipped = workplex("run", str(EXAMPLES / "conditional.yaml"), "--json", "--no-store")
    assert skipped.code == 0, skipped.stderr
    stages = skipped.json["stages"]
    assert stages["deploy"]["status"] == "skipped"
    assert stages["notify"]["output"] == {"built": "built\n"}

    ran = workplex(
        "run",
        str(EXAMPLES / "conditional.yaml"),
        "--input",
        "deploy=true",
        "--json",
        "--store",
        f"sqlite:///{tmp_path / 'runs.db'}",
    )
    assert ran.code == 0, ran.stderr
    assert ran.json["stages"]["deploy"]["output"]["stdout"] == "deployed\n"
    assert (tmp_path / "runs.db").exists()


def test_all_examples_validate(workplex: Workplex) -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    done = workplex("validate", *files, env={"PYTHONPATH": str(EXAMPLES)})
    assert done.code == 0, done.stderr
    assert done.stdout.count("ok: ") == len(files)


def test_a_failed_run_exits_1(workplex: Workplex, tmp_path: Path) -> None:
    path = tmp_path / "fail.yaml"
    path.write_text(
        'name: fail\nstages:\n  - name: a\n    executor: command\n    input: {command: "false"}\n'
    )
    done = workplex("run", str(path), "--json", "--no-store")
    assert done.code == 1
    assert done.json["status"] == "failed"
    assert "exit code 1" in done.json["stages"]["a"]["error"]
