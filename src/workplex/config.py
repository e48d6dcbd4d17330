"""The configuration file (``workplex.yaml``): executors, security cap, overlay defaults, secrets.

Found, in order: an explicit path (``--config``), ``$WORKPLEX_CONFIG``, ``./workplex.yaml``.
Without any, defaults apply. Unknown keys are errors naming the key and where it is.

Example::

    >>> cfg = Config.model_validate({"max_security": "trusted"})
    >>> cfg.max_security.value
    'trusted'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from workplex.errors import ConfigError, pydantic_reason, unreadable
from workplex.executor import Secrets, SecurityLevel

DEFAULT_NAME = "workplex.yaml"
ENV_VAR = "WORKPLEX_CONFIG"
SECRET_ENV_PREFIX = "WORKPLEX_SECRET_"


class SecretsConfig(BaseModel):
    """Where secrets come from: environment variables with a prefix, and/or a YAML file."""

    model_config = ConfigDict(extra="forbid")
    env_prefix: str = SECRET_ENV_PREFIX
    file: Path | None = None


class Config(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid")

    max_security: SecurityLevel = SecurityLevel.PRIVILEGED
    executors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-executor settings: ``enabled`` plus the executor's own ``Config`` keys."""
    overlays: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-executor overlay defaults (a stage's own settings win)."""
    patterns: dict[str, dict[str, Any]] = Field(default_factory=dict)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    store: str | None = None
    """Run store URL (``--store`` and ``$WORKPLEX_STORE`` win)."""
    store_max_output_bytes: int | None = Field(default=None, gt=0)
    """Cap on one stored output (JSON bytes); larger ones are truncated with a marker.
    Default: ``$WORKPLEX_STORE_MAX_OUTPUT`` or 1 MiB."""
    source: str = Field(default="(defaults)", exclude=True)

    @field_validator("max_security", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("executors", "overlays", "patterns", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, dict):
            return {k: (val if val is not None else {}) for k, val in v.items()}
        return v

    def executor_settings(self, name: str) -> dict[str, Any]:
        return dict(self.executors.get(name) or {})

    def load_secrets(self) -> Secrets:
        """Secrets from ``WORKPLEX_SECRET_<NAME>`` variables and the optional secrets file."""
        values: dict[str, str] = {}
        prefix = self.secrets.env_prefix
        for key, value in os.environ.items():
            if prefix and key.startswith(prefix):
                values[key[len(prefix) :]] = value
        if self.secrets.file is not None:
            path = self.secrets.file
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{self.source}: secrets.file {path}: {unreadable(exc)}") from exc
            except (yaml.YAMLError, RecursionError) as exc:
                raise ConfigError(f"{self.source}: secrets.file {path}: not valid YAML") from exc
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: a secrets file must be a mapping of NAME: value")
            values.update({str(k): str(v) for k, v in data.items()})
        return Secrets(values)


def find_config_path(explicit: str | Path | None = None) -> Path | None:
    """The config file to use, or None for defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    local = Path.cwd() / DEFAULT_NAME
    return local if local.is_file() else None


def load_config(explicit: str | Path | None = None) -> Config:
    """Load and validate the configuration file (or defaults when there is none)."""
    path = find_config_path(explicit)
    if path is None:
        return Config()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {unreadable(exc)}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: nested too deeply to read") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config file must be a mapping at the top level")
    return parse_config(data, source=str(path), base_dir=path.parent)


def parse_config(data: dict[str, Any], source: str = "(config)", base_dir: Path | None = None) -> Config:
    """Validate a config mapping, with errors naming the key and the file."""
    try:
        cfg = Config.model_validate(data)
    except PydanticValidationError as exc:
        raise ConfigError(_describe(source, exc)) from exc
    cfg.source = source
    if base_dir is not None and cfg.secrets.file is not None and not cfg.secrets.file.is_absolute():
        cfg.secrets.file = base_dir / cfg.secrets.file
    return cfg


def _describe(source: str, exc: PydanticValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {pydantic_reason(err)}")
    return f"{source}: " + "; ".join(parts)
