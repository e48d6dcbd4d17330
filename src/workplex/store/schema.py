"""The store's tables, as SQLAlchemy Core objects used to build queries.

The DDL that creates them lives in ``migrations.py`` (versioned); these definitions describe
the latest version. JSON values are kept in TEXT columns, serialized once by the store, so
SQLite and PostgreSQL hold the same bytes and no per-row type processing runs on reads.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(200), primary_key=True),
    Column("pipeline", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("document", Text),
    Column("path", Text),
    Column("inputs", Text),
    Column("output", Text),
    Column("error", Text),
    Column("parent_run_id", String(200)),
    Column("created", Float, nullable=False),
    Column("started", Float),
    Column("ended", Float),
    Column("updated", Float),
    Column("lease_owner", String(200)),
    Column("lease_until", Float),
    Column("cancel_requested", Boolean, nullable=False, default=False),
)

stages = Table(
    "stages",
    metadata,
    Column("run_id", String(200), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("output", Text),
    Column("error", Text),
    Column("total", Integer),
    Column("started", Float),
    Column("ended", Float),
)

tasks = Table(
    "tasks",
    metadata,
    Column("run_id", String(200), primary_key=True),
    Column("stage", String(200), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("task_id", String(300), nullable=False),
    Column("executor", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("output", Text),
    Column("error", Text),
    Column("exit_code", Integer),
    Column("attempts", Integer, nullable=False),
    Column("started", Float),
    Column("ended", Float),
    Column("duration", Float),
    Column("logs", Text),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String(200), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kind", String(50), nullable=False),
    Column("stage", String(200)),
    Column("data", Text),
)

approvals = Table(
    "approvals",
    metadata,
    Column("run_id", String(200), primary_key=True),
    Column("stage", String(200), primary_key=True),
    Column("requested", Float, nullable=False),
    Column("message", Text),
    Column("approved", Boolean),
    Column("comment", Text),
    Column("decided_by", String(200)),
    Column("decided", Float),
)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

FINISHED = ("succeeded", "failed", "cancelled")
"""Run statuses after which nothing more happens to a run (what ``gc`` may delete)."""
