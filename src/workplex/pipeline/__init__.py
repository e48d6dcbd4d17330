"""Pipelines: the model (stages), the YAML loader, expressions, and the compiled plan."""

from workplex.durations import parse_duration
from workplex.pipeline.loader import read_pipeline
from workplex.pipeline.model import (
    GatherSpec,
    InputSpec,
    Pipeline,
    ScatterSpec,
    Stage,
)

__all__ = [
    "GatherSpec",
    "InputSpec",
    "Pipeline",
    "ScatterSpec",
    "Stage",
    "parse_duration",
    "read_pipeline",
]
