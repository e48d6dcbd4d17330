"""The store's unit tests again, on a real PostgreSQL server (a fresh database per test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.unit.store.test_store_migrations import (
    test_a_store_from_a_newer_workplex_is_refused,
    test_a_v1_store_is_migrated_when_opened,
    test_the_migrated_schema_matches_the_table_definitions,
)
from tests.unit.store.test_store_sqlite import (
    test_a_task_recorded_twice_keeps_the_last_result,
    test_an_expired_lease_can_be_taken_over,
    test_approvals,
    test_cancel_of_a_driven_run_reaches_the_driver_through_renew,
    test_cancel_of_an_undriven_run_is_immediate,
    test_create_and_read_back_a_run_with_its_stages,
    test_events_and_logs_in_order,
    test_exactly_one_of_several_processes_takes_the_lease,
    test_gc_deletes_old_finished_runs_and_their_rows,
    test_large_outputs_are_truncated_with_a_marker,
    test_leases_are_exclusive_between_stores,
    test_list_runs_newest_first_with_filters,
    test_run_and_stage_updates,
    test_task_done_is_buffered_then_written_in_batches,
    test_task_results_round_trip,
    test_the_lease_of_a_dead_local_process_is_taken_over,
)
from workplex.store import Store

__all__ = [
    "test_a_store_from_a_newer_workplex_is_refused",
    "test_a_task_recorded_twice_keeps_the_last_result",
    "test_a_v1_store_is_migrated_when_opened",
    "test_an_expired_lease_can_be_taken_over",
    "test_approvals",
    "test_cancel_of_a_driven_run_reaches_the_driver_through_renew",
    "test_cancel_of_an_undriven_run_is_immediate",
    "test_create_and_read_back_a_run_with_its_stages",
    "test_events_and_logs_in_order",
    "test_exactly_one_of_several_processes_takes_the_lease",
    "test_gc_deletes_old_finished_runs_and_their_rows",
    "test_large_outputs_are_truncated_with_a_marker",
    "test_leases_are_exclusive_between_stores",
    "test_list_runs_newest_first_with_filters",
    "test_run_and_stage_updates",
    "test_task_done_is_buffered_then_written_in_batches",
    "test_task_results_round_trip",
    "test_the_lease_of_a_dead_local_process_is_taken_over",
    "test_the_migrated_schema_matches_the_table_definitions",
]


async def _admin(server: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def store_url(postgres_url: str) -> Iterator[str]:
    name = f"workplex_unit_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(postgres_url, f'CREATE DATABASE "{name}"'))
    base, _, _ = postgres_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await Store.open(store_url)
    try:
        yield s
    finally:
        await s.close()
