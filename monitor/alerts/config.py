"""Schema of the `alerts:` config section (imported by monitor.config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AlertsConfig(BaseModel):
    """Where alerts go. Filled in by the alerts work (issue 6)."""

    model_config = ConfigDict(extra="forbid")

    sinks: list[dict] = []
