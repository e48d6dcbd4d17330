"""Fixtures shared by integration tests of several areas."""

from .postgres_fixture import postgres_url

__all__ = ["postgres_url"]
