"""Functions used by the document-processing example (run it with PYTHONPATH=examples)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def parse(path: str, kind: str) -> dict[str, Any]:
    """Read one document and describe it."""
    text = (HERE / path).read_text()
    return {"path": path, "documentType": kind, "words": len(text.split())}


def consolidate(group: dict[str, Any]) -> dict[str, Any]:
    """One report per document type."""
    items = group["items"]
    return {
        "documentType": group["key"],
        "documents": len(items),
        "words": sum(item["words"] for item in items),
    }
