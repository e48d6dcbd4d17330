"""Where the store lives: turning ``--store`` / ``WORKPLEX_STORE`` / config ``store:`` into a URL.

Accepted forms::

    None                          ->  sqlite file in the per-user data directory
    sqlite:///runs.db             ->  sqlite+aiosqlite:///runs.db       (relative to the cwd)
    sqlite:////var/lib/runs.db    ->  sqlite+aiosqlite:////var/lib/runs.db
    runs.db, /tmp/x/runs.db       ->  a plain path is a SQLite file
    postgresql://u:p@host/db      ->  postgresql+asyncpg://u:p@host/db  (postgres:// too)

    >>> driver_url("sqlite:///runs.db")
    'sqlite+aiosqlite:///runs.db'
    >>> driver_url("postgres://u@localhost/db")
    'postgresql+asyncpg://u@localhost/db'
"""

from __future__ import annotations

import os
from pathlib import Path

from workplex.errors import StoreError

ENV_VAR = "WORKPLEX_STORE"


def default_path() -> Path:
    """``$XDG_DATA_HOME/workplex/runs.db``, else ``~/.local/share/workplex/runs.db``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "workplex" / "runs.db"


def resolve_url(explicit: str | None = None, configured: str | None = None) -> str:
    """The store URL to use: ``--store`` (or ``$WORKPLEX_STORE``), then config, then default."""
    return explicit or os.environ.get(ENV_VAR) or configured or f"sqlite:///{default_path()}"


def driver_url(url: str | None) -> str:
    """The SQLAlchemy async URL for a user-facing store URL (see the module docstring)."""
    if not url:
        url = f"sqlite:///{default_path()}"
    scheme, sep, rest = url.partition("://")
    if not sep:
        # A plain filesystem path.
        return f"sqlite+aiosqlite:///{url}"
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return f"sqlite+aiosqlite://{rest}"
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return f"postgresql+asyncpg://{rest}"
    raise StoreError(
        f"store URL {redact(url)!r}: unsupported scheme {scheme!r}; "
        "use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"
    )


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite+aiosqlite`` URL (None for memory or other databases)."""
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):
        return None
    path = url[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
