"""What every sink implements, how one is built, and how secrets are read (environment or file, never config)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from monitor.alerts.config import SINKS, SinkConfig
from monitor.alerts.events import Alert, SinkError


class Sink:
    """One delivery target. `send` raises SinkError on failure; the dispatcher retries."""

    def __init__(self, config) -> None:  # noqa: ANN001 - each sink takes its own config class
        self.config = config
        self.name: str = config.name
        # False for `monitor test-alert`: a one-off sender must not speak for the daemon (MQTT availability).
        self.announce = True

    def open(self) -> None:
        """Connect where a sink keeps a connection (MQTT); called by the sink's worker thread."""

    def send(self, alert: Alert) -> None:
        """Deliver one alert or raise SinkError."""
        raise NotImplementedError

    def close(self) -> None:
        """Disconnect; called when the dispatcher stops."""


def build_sink(config: SinkConfig) -> Sink:
    """The sink object for one sink config; its module is imported only now (see SINKS)."""
    module, _, cls = SINKS[config.type].impl.partition(":")
    return getattr(importlib.import_module(module), cls)(config)


def env_secret(var: str, what: str) -> str:
    """The value of an environment variable holding a secret; SinkError naming it when unset."""
    value = os.environ.get(var)
    if value is None or value == "":
        raise SinkError(f"environment variable {var} ({what}) is not set")
    return value


def password(password_env: str | None, password_file: Path | None) -> str | None:
    """A password from the environment or a credentials file (trailing newline dropped), or None."""
    if password_env:
        return env_secret(password_env, "password")
    if password_file:
        try:
            return Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SinkError(f"cannot read password_file {password_file}: {exc.strerror or exc}") from None
    return None


def headers_from_env(fixed: dict[str, str], from_env: dict[str, str]) -> dict[str, str]:
    """Fixed headers plus headers whose values come from environment variables."""
    headers = dict(fixed)
    for header, var in from_env.items():
        headers[header] = env_secret(var, f"header {header}")
    return headers
