"""The config schema, its defaults, and errors that name the file and the key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.alerts.config import SINK_TYPES, AlertsConfig
from monitor.images import IMAGE_EXTENSIONS
from monitor.schema import Name, StrictModel, key_path


class ConfigError(Exception):
    """A config that cannot be used; the message names the file and the key."""


class FolderSourceConfig(StrictModel):
    """A watched folder: files created or moved into it are scored once."""

    name: Name
    folder: Path
    recursive: bool = True
    extensions: list[str] = list(IMAGE_EXTENSIONS)
    # A file closed by its writer, or a PNG/JPEG/BMP (they carry their own end marker), is read after this quiet
    # time; any other file never seen closed (a TIFF on a network share) after `stable_s` of unchanged size.
    settle_ms: int = Field(default=20, ge=0, le=60_000)
    stable_s: float = Field(default=2.0, gt=0, le=3600)
    # An image that still does not decode this long after its last change is quarantined.
    incomplete_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    max_file_bytes: int = Field(default=100 * 2**20, gt=0)

    @field_validator("extensions")
    @classmethod
    def _lower_dotted(cls, value: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in value]


class CameraSourceConfig(StrictModel):
    """A live camera: USB index or device, rtsp://, http:// MJPEG, or a video file."""

    name: Name
    camera: int | str
    fps: float = Field(default=2.0, gt=0, le=120)
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in pixels
    rtsp_transport: Literal["tcp", "udp"] | None = None
    loop: bool = False  # video files: start again at the end
    read_timeout_s: float = Field(default=5.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    lost_after_s: float = Field(default=30.0, ge=0)  # grace period before "camera lost"

    @field_validator("roi")
    @classmethod
    def _positive_roi(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is not None and (value[0] < 0 or value[1] < 0 or value[2] <= 0 or value[3] <= 0):
            raise ValueError("roi is [x, y, width, height] with x, y >= 0 and width, height > 0")
        return value


def _source_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "camera" in value:
            return "camera"
        if "folder" in value:
            return "folder"
        return None
    return "camera" if isinstance(value, CameraSourceConfig) else "folder"


SourceConfig = Annotated[
    Annotated[FolderSourceConfig, Tag("folder")] | Annotated[CameraSourceConfig, Tag("camera")],
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message="a source needs either a 'folder:' or a 'camera:' key",
    ),
]


class ThresholdConfig(StrictModel):
    """Rolling quantile of the recent normal scores of each source, or a fixed value."""

    quantile: float | None = Field(default=None, gt=0, lt=1)  # None: the bundle's quantile
    window: int = Field(default=2000, ge=10, le=10_000_000)
    margin: float | None = Field(default=None, gt=0)  # threshold = margin * quantile; None: bundle's
    fixed: float | None = Field(default=None, gt=0)
    learn_from_anomalies: bool = False

    @model_validator(mode="after")
    def _fixed_or_quantile(self) -> ThresholdConfig:
        if self.fixed is not None and self.quantile is not None:
            raise ValueError("set either 'fixed' or 'quantile', not both")
        return self


class BatchingConfig(StrictModel):
    max_batch: int = Field(default=32, ge=1, le=1024)
    max_wait_ms: float = Field(default=20, ge=0, le=60_000)
    queue_size: int = Field(default=256, ge=1, le=1_000_000)


class OutputConfig(StrictModel):
    journal: Path = Path("var/journal.jsonl")
    journal_max_bytes: int = Field(default=64 * 2**20, ge=4096)
    journal_backups: int = Field(default=10, ge=0)
    evidence: Path = Path("var/evidence")
    evidence_max_files: int = Field(default=5000, ge=0)
    evidence_max_bytes: int = Field(default=1024 * 2**20, ge=0)
    quarantine: Path = Path("var/quarantine")
    state: Path = Path("var/state")  # ledger of scored files, alert outbox


class MetricsConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class LoggingConfig(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"


class Config(StrictModel):
    """The whole daemon config; relative paths are resolved against the config file's folder."""

    model: Path = Path("models/default")
    sources: list[SourceConfig] = Field(min_length=1)
    threshold: ThresholdConfig = ThresholdConfig()
    batching: BatchingConfig = BatchingConfig()
    output: OutputConfig = OutputConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    alerts: AlertsConfig = AlertsConfig()

    @model_validator(mode="after")
    def _unique_source_names(self) -> Config:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dupes)}")
        return self

    @property
    def folder_sources(self) -> list[FolderSourceConfig]:
        return [s for s in self.sources if isinstance(s, FolderSourceConfig)]

    @property
    def camera_sources(self) -> list[CameraSourceConfig]:
        return [s for s in self.sources if isinstance(s, CameraSourceConfig)]


def _resolve(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def camera_kind(camera: int | str) -> str:
    """'device' (USB index, /dev/videoN), 'stream' (any URL) or 'file' (a video file to replay)."""
    if isinstance(camera, int) or camera.strip().isdigit() or camera.startswith("/dev/"):
        return "device"  # camera: "0" is USB camera 0, not a file named 0
    if "://" in camera:
        return "stream"
    return "file"


def parse_config(data: Any, path: Path) -> Config:
    """Validate a loaded YAML document; relative paths become relative to `path`'s folder."""
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{path}: {key_path(err['loc'], ('folder', 'camera', *SINK_TYPES)) or '(top level)'}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    base = path.resolve().parent
    config.model = _resolve(base, config.model)
    out = config.output
    for key in ("journal", "evidence", "quarantine", "state"):
        setattr(out, key, _resolve(base, getattr(out, key)))
    for source in config.sources:
        if isinstance(source, FolderSourceConfig):
            source.folder = _resolve(base, source.folder)
        elif camera_kind(source.camera) == "file":
            source.camera = str(_resolve(base, Path(str(source.camera))))
    config.alerts.resolve_paths(base)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises ConfigError naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, path)


def setup_logging(level: str = "INFO") -> None:
    """One line per event, greppable: time, level, logger, message with key=value fields."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
