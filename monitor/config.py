"""The config schema, its defaults, and errors that name the file and the key."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

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
from monitor.images import IMAGE_EXTENSIONS, MAX_DECODED_BYTES
from monitor.logsafe import SafeFormatter
from monitor.schema import Name, StrictModel, key_path


class ConfigError(Exception):
    """A config that cannot be used; the message names the file and the key."""


class FolderSourceConfig(StrictModel):
    """A watched folder: files created or moved into it are scored once."""

    name: Name
    folder: Path
    model: Name = "default"  # a key of `models:` (`model:` alone is the model called `default`)
    # A candidate model (a key of `models:`) that scores the same frames in shadow: journaled, never alerted.
    shadow: Name | None = None
    recursive: bool = True
    extensions: list[str] = list(IMAGE_EXTENSIONS)
    # A file closed by its writer, or a PNG/JPEG/BMP (they carry their own end marker), is read after this quiet
    # time; any other file never seen closed (a TIFF on a network share) after `stable_s` of unchanged size.
    settle_ms: int = Field(default=20, ge=0, le=60_000)
    stable_s: float = Field(default=2.0, gt=0, le=3600)
    # Look for new and changed files every poll_s seconds instead of asking the kernel (inotify): for a network
    # share (NFS, SMB/CIFS), where files written by other machines raise no inotify event on this one. None:
    # inotify. Each poll stats every file under the folder.
    poll_s: float | None = Field(default=None, gt=0, le=3600)
    # An image that still does not decode this long after its last change is quarantined.
    incomplete_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    max_file_bytes: int = Field(default=100 * 2**20, gt=0)
    # Bytes of the decoded array (width x height x channels x bytes per sample, read from the header): a small
    # compressed file can claim gigabytes. Larger images are quarantined as too_large without being decoded.
    max_decoded_bytes: int = Field(default=MAX_DECODED_BYTES, gt=0)
    # True: the source starts paused (nothing read, the backlog waits) until `POST /api/sources/NAME/resume`.
    paused: bool = False
    # Fraction of this source's normal verdicts whose input is kept in `output.originals`; None: the
    # `originals.normal_rate` of the config.
    keep_normal_rate: float | None = Field(default=None, ge=0, le=1)
    # What happens to a file once its verdict is durable in the journal (monitor/sources/sorting.py).
    after_scoring: Literal["keep", "move", "delete"] = "keep"
    # `move`: <sorted_folder>/ok|ng/YYYY-MM-DD/<path in the watched folder>; None: <output.state>/../sorted/<name>.
    sorted_folder: Path | None = None
    # Retention of the sorted folder, checked once a minute: the oldest files (by mtime) go beyond either limit.
    sorted_max_age_days: float | None = Field(default=30.0, gt=0)
    sorted_max_bytes: int | None = Field(default=10 * 2**30, gt=0)

    @field_validator("extensions")
    @classmethod
    def _lower_dotted(cls, value: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in value]


class CameraSourceConfig(StrictModel):
    """A live camera: USB index or device, rtsp://, http:// MJPEG, or a video file."""

    name: Name
    camera: int | str
    model: Name = "default"
    shadow: Name | None = None  # a candidate model scoring the same frames in shadow (see FolderSourceConfig)
    fps: float = Field(default=2.0, gt=0, le=120)
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in pixels
    rtsp_transport: Literal["tcp", "udp"] | None = None
    loop: bool = False  # video files: start again at the end
    read_timeout_s: float = Field(default=5.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    lost_after_s: float = Field(default=30.0, ge=0)  # grace period before "camera lost"
    paused: bool = False  # True: the camera starts paused (not opened) until resumed through the API
    keep_normal_rate: float | None = Field(default=None, ge=0, le=1)  # as a folder source's

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


class ScoringConfig(StrictModel):
    """Which engine runs the scorer's forward pass (monitor/model/backends.py); one setting for the daemon.

    Restart-only, like `batching`: the converted graph is built once per model at load.
    """

    # tensorflow: the default. openvino: the same graph converted at load; measured 1.3-1.4x TensorFlow's
    # img/s on a 2-core CPU that runs the daemon alone, but 0.6x when other processes share the cores.
    backend: Literal["tensorflow", "openvino"] = "tensorflow"
    # OpenVINO's compute threads; None: its default (every core). TensorFlow sizes its own pool.
    threads: int | None = Field(default=None, ge=1, le=1024)


class OutputConfig(StrictModel):
    journal: Path = Path("var/journal.jsonl")
    journal_max_bytes: int = Field(default=64 * 2**20, ge=4096)
    journal_backups: int = Field(default=10, ge=0)
    evidence: Path = Path("var/evidence")
    evidence_max_files: int = Field(default=5000, ge=0)
    evidence_max_bytes: int = Field(default=1024 * 2**20, ge=0)
    quarantine: Path = Path("var/quarantine")
    state: Path = Path("var/state")  # ledger of scored files, alert outbox
    originals: Path = Path("var/originals")  # kept inputs (see `originals:`)


class OriginalsConfig(StrictModel):
    """Which inputs are kept at full resolution in `output.originals`, for review and retraining.

    Reloadable: a reload applies new rates and limits to the next batch and the next retention pass.
    """

    anomalies: bool = True  # keep the input of every anomaly
    # Fraction of normal verdicts whose input is kept (a random sample); a source's `keep_normal_rate` wins.
    normal_rate: float = Field(default=0.0, ge=0, le=1)
    # Retention, checked once a minute: older files go, then the oldest beyond the byte limit.
    max_age_days: float | None = Field(default=30.0, gt=0)
    max_bytes: int | None = Field(default=10 * 2**30, gt=0)


class MetricsConfig(StrictModel):
    """The one HTTP server: /metrics, health, the JSON API (monitor/http/)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    # A file holding the bearer token the API's write actions need (else MONITOR_API_TOKEN); off loopback,
    # writes are refused until one is set.
    token_file: Path | None = None
    # Reading the review page and its API needs the token too (a browser signs in once at /login).
    read_token_required: bool = False


class HttpConfig(StrictModel):
    """How people reach the daemon's HTTP server (its address and port are `metrics.host` / `metrics.port`).

    A section of its own, not a key of `metrics:`: `metrics:` binds the socket and needs a restart, while
    this only changes texts, so a reload applies it to the next alert.
    """

    # The URL people open the server at, as Alertmanager's --web.external-url and Grafana's root_url have
    # it: `http://line1-pc:9108/`, or a reverse proxy's `https://qa.example.com/line1/`. Alerts link each
    # anomaly to `<external_url>/verdicts/<verdict id>`; None: alerts carry no link.
    external_url: str | None = None

    @field_validator("external_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://line1-pc:9108/")
        if parts.query or parts.fragment or any(ch.isspace() for ch in value):
            raise ValueError("must be a plain base URL: no query, fragment or spaces")
        return value.rstrip("/")


class LoggingConfig(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # One `source_summary` line per source at this interval (seconds); 0 turns them off.
    summary_interval_s: float = Field(default=60.0, ge=0, le=86_400)


class Config(StrictModel):
    """The whole daemon config; relative paths are resolved against the config file's folder."""

    model: Path = Path("models/default")  # the model called `default`; or `models:`, not both
    models: dict[Name, Path] = {}  # name -> bundle folder; sources pick one with `model: NAME`
    sources: list[SourceConfig] = Field(min_length=1)
    threshold: ThresholdConfig = ThresholdConfig()
    batching: BatchingConfig = BatchingConfig()
    scoring: ScoringConfig = ScoringConfig()
    output: OutputConfig = OutputConfig()
    metrics: MetricsConfig = MetricsConfig()
    http: HttpConfig = HttpConfig()
    logging: LoggingConfig = LoggingConfig()
    alerts: AlertsConfig = AlertsConfig()
    originals: OriginalsConfig = OriginalsConfig()

    @model_validator(mode="after")
    def _unique_source_names(self) -> Config:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dupes)}")
        return self

    def source(self, name: str) -> SourceConfig | None:
        """The source called `name`, or None."""
        return next((s for s in self.sources if s.name == name), None)

    @property
    def folder_sources(self) -> list[FolderSourceConfig]:
        return [s for s in self.sources if isinstance(s, FolderSourceConfig)]

    @property
    def camera_sources(self) -> list[CameraSourceConfig]:
        return [s for s in self.sources if isinstance(s, CameraSourceConfig)]


# Linux's limits (NAME_MAX, PATH_MAX): a longer path passes every check here and fails with ENAMETOOLONG
# at the first open, in the middle of a run; refused up front it is a config error naming the key.
NAME_MAX = 255
PATH_MAX = 4096

OUTPUT_KEYS = ("journal", "evidence", "quarantine", "state", "originals")


def _printable(text: str) -> str:
    """`text` with control characters escaped, so a key or a value from the file can never split a line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for an error (``Permission denied``), else the exception's one line."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return _printable(reason.strip().splitlines()[0] if reason.strip() else type(exc).__name__)


def _resolve(base: Path, path: Path, where: Path | str, key: str) -> Path:
    """`path` with ``~`` expanded, made absolute against `base`; ConfigError naming `key` if the OS refuses it.

    The OS refuses what pydantic accepts as a path: a NUL byte (ValueError), ``~user`` for a user that
    does not exist (RuntimeError), a path longer than the kernel takes (OSError at the first use).
    """
    text = str(path)
    if "\0" in text:
        raise ConfigError(f"{where}: {key}: the path contains a NUL byte")
    try:
        path = path.expanduser()
    except RuntimeError:  # pathlib: no such user, or no home folder for a bare ~
        user = text.split("/", 1)[0]
        raise ConfigError(f"{where}: {key}: cannot expand {_printable(user)!r}: no such user or no home folder") \
            from None
    try:
        path = path if path.is_absolute() else (base / path).resolve()
    except (ValueError, RuntimeError, OSError) as exc:  # RuntimeError: pathlib's symlink loop
        raise ConfigError(f"{where}: {key}: cannot resolve the path: {_os_reason(exc)}") from None
    _check_length(path, where, key)
    return path


def _check_length(path: Path, where: Path | str, key: str) -> None:
    """ConfigError when `path` or one of its names is longer than the kernel accepts (ENAMETOOLONG)."""
    encoded = os.fsencode(path)
    if len(encoded) >= PATH_MAX:
        raise ConfigError(f"{where}: {key}: the path is too long ({len(encoded)} bytes, the limit is {PATH_MAX - 1})")
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    if longest > NAME_MAX:
        raise ConfigError(f"{where}: {key}: a name in the path is too long ({longest} bytes, the limit is "
                          f"{NAME_MAX})")


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
    _check_shape(data, path)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            key = key_path(err["loc"], ("folder", "camera", *SINK_TYPES)) or "(top level)"
            # Keys and messages come from the file: a newline in a key must not start a line of its own.
            lines.append(f"{path}: {_printable(key)}: {_printable(msg)}")
        raise ConfigError("\n".join(lines)) from None
    except RecursionError:
        raise ConfigError(f"{path}: the document is nested too deeply") from None
    base = path.resolve().parent
    config.model = _resolve(base, config.model, path, "model")
    # One map for the daemon: `model:` alone is the model called `default`.
    config.models = ({name: _resolve(base, p, path, f"models.{name}") for name, p in config.models.items()}
                     or {DEFAULT_MODEL: config.model})
    out = config.output
    for key in OUTPUT_KEYS:
        setattr(out, key, _resolve(base, getattr(out, key), path, f"output.{key}"))
    for i, source in enumerate(config.sources):
        if isinstance(source, FolderSourceConfig):
            source.folder = _resolve(base, source.folder, path, f"sources[{i}].folder")
            if source.sorted_folder is not None:
                source.sorted_folder = _resolve(base, source.sorted_folder, path, f"sources[{i}].sorted_folder")
        elif isinstance(source.camera, str) and "\0" in source.camera:
            raise ConfigError(f"{path}: sources[{i}].camera: contains a NUL byte")
        elif camera_kind(source.camera) == "file":
            source.camera = str(_resolve(base, Path(str(source.camera)), path, f"sources[{i}].camera"))
    if config.metrics.token_file is not None:
        config.metrics.token_file = _resolve(base, config.metrics.token_file, path, "metrics.token_file")
    _resolve_alert_paths(config, base, path)
    _check_models_known(config, path)
    _check_folders_apart(config, path)
    _check_outputs_unwatched(config, path)
    _check_pruned_trees(config, path)
    _check_scoring(config, path)
    return config


def _check_scoring(config: Config, path: Path) -> None:
    """ConfigError naming `scoring.threads` when it is set for TensorFlow: refused rather than ignored, since
    a value that silently changes nothing would be believed to work. (Whether the backend is installed is
    check_inputs' question: the config itself is valid on a machine without it.)"""
    if config.scoring.threads is not None and config.scoring.backend != "openvino":
        raise ConfigError(f"{path}: scoring.threads: applies to backend openvino only (TensorFlow sizes its own "
                          "thread pool)")


def _check_outputs_unwatched(config: Config, path: Path) -> None:
    """ConfigError naming `output.KEY` when a folder the daemon writes images into lies in a watched folder:
    each kept original, evidence picture or quarantined file would be scored again (and an anomaly's copy
    would be kept, and scored, without end)."""
    for key in ("originals", "evidence", "quarantine"):
        mine = _real(getattr(config.output, key))
        for source in config.folder_sources:
            watched = _real(source.folder)
            if mine == watched or (mine.is_relative_to(watched) and source.recursive):
                raise ConfigError(f"{path}: output.{key}: {mine} is inside the folder {watched} that source "
                                  f"{source.name!r} watches: its files would be scored again")


def sorted_folder_of(source: FolderSourceConfig, state: Path) -> Path:
    """Where `after_scoring: move` sorts the files of `source`: its `sorted_folder`, else
    `<output.state>/../sorted/<name>` (beside the state folder, out of every watched folder by default)."""
    return source.sorted_folder if source.sorted_folder is not None else state.parent / "sorted" / source.name


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def _check_pruned_trees(config: Config, path: Path) -> None:
    """ConfigError when a folder that retention prunes by age and size overlaps what it must not touch.

    Two kinds of tree are pruned: a `move` source's sorted folder and `output.originals`. Retention deletes
    whatever such a tree holds, so no watched folder, other output (evidence, quarantine, state, the journal)
    or other pruned tree may lie inside one. A sorted folder must not lie inside any of them either (its files
    would be scored again); originals inside a watched folder is `_check_outputs_unwatched`'s question.
    """
    others: list[tuple[str, Path]] = [(f"the folder source {s.name!r} watches", _real(s.folder))
                                      for s in config.folder_sources]
    others += [(f"output.{key}", _real(getattr(config.output, key)))
               for key in ("evidence", "quarantine", "state", "journal")]
    originals = _real(config.output.originals)
    for what, other in others:
        if other.is_relative_to(originals):
            raise ConfigError(f"{path}: output.originals: {other} ({what}) lies inside {originals}, which "
                              "retention prunes by age and size: keep the originals folder apart")
    others.append(("output.originals", originals))
    for i, source in enumerate(config.sources):
        if not isinstance(source, FolderSourceConfig) or source.after_scoring != "move":
            continue
        mine = _real(sorted_folder_of(source, config.output.state))
        for what, other in others:
            if mine.is_relative_to(other) or other.is_relative_to(mine):
                raise ConfigError(f"{path}: sources[{i}].sorted_folder: {mine} overlaps {other} ({what}): "
                                  "the sorted folder must be outside every watched, output and sorted folder")
        others.append((f"the sorted folder of {source.name!r}", mine))


DEFAULT_MODEL = "default"


def _check_shape(data: dict, path: Path) -> None:
    """What the schema cannot say in its own words: `model` with `models`, `folder` with `camera`."""
    if "model" in data and "models" in data:
        raise ConfigError(f"{path}: models: set either 'model' (one bundle) or 'models' (bundles by name), "
                          "not both")
    sources = data.get("sources")
    for i, source in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(source, dict) and "folder" in source and "camera" in source:
            name = _printable(str(source.get("name", "?")))
            raise ConfigError(f"{path}: sources[{i}]: source {name!r} has both 'folder' and 'camera': "
                              "a source is one or the other")


def _check_models_known(config: Config, path: Path) -> None:
    """ConfigError naming the key of a source whose model or shadow is not one of `models:`, or whose shadow is
    its own model (nothing to compare)."""
    known = ", ".join(sorted(config.models))
    for i, source in enumerate(config.sources):
        if source.model not in config.models:
            raise ConfigError(f"{path}: sources[{i}].model: unknown model {source.model!r} (known: {known})")
        if source.shadow is not None and source.shadow not in config.models:
            raise ConfigError(f"{path}: sources[{i}].shadow: unknown model {source.shadow!r} (known: {known})")
        if source.shadow is not None and source.shadow == source.model:
            raise ConfigError(f"{path}: sources[{i}].shadow: {source.shadow!r} is the source's own model: a shadow "
                              "is another model, compared with it")


def _check_folders_apart(config: Config, path: Path) -> None:
    """ConfigError when two sources watch the same folder, or one watches inside another's recursive tree.

    Each file would be scored twice (two ledgers, two verdicts); compared on fully resolved paths so a
    symlink or a `..` cannot hide it.
    """
    resolved: list[tuple[int, FolderSourceConfig, Path]] = []
    for i, source in enumerate(config.sources):
        if isinstance(source, FolderSourceConfig):
            try:
                real = source.folder.resolve()
            except (OSError, RuntimeError):
                real = source.folder
            resolved.append((i, source, real))
    for i, a, pa in resolved:
        for j, b, pb in resolved:
            if j <= i:
                continue
            if pa == pb:
                raise ConfigError(f"{path}: sources[{j}].folder: source {b.name!r} watches the same folder as "
                                  f"{a.name!r} ({pa})")
            for (k, outer, po), (_, inner, pi) in (((i, a, pa), (j, b, pb)), ((j, b, pb), (i, a, pa))):
                if outer.recursive and pi.is_relative_to(po):
                    key = max(i, j)
                    raise ConfigError(f"{path}: sources[{key}].folder: source {inner.name!r} watches {pi}, inside "
                                      f"the folder {po} that {outer.name!r} watches recursively (sources[{k}])")


def check_inputs(config: Config, path: str | Path) -> None:
    """ConfigError for what `run` would refuse before scoring: a model bundle that is missing or whose
    sidecar is not valid, a video file that does not exist, a scoring backend that is not installed. Reads
    sidecars only, never TensorFlow."""
    from monitor.model.backends import openvino_available

    # Before the bundles (reading a sidecar imports TensorFlow, which `run` has not silenced yet): one line.
    if config.scoring.backend == "openvino" and not openvino_available():
        raise ConfigError(f"{path}: scoring.backend: openvino is not installed "
                          "(pip install -e '.[bench]' or openvino)")
    from monitor.model.bundle import BundleError, read_sidecar


    for name, folder in config.models.items():
        key = "model" if list(config.models) == [DEFAULT_MODEL] and folder == config.model else f"models.{name}"
        try:
            read_sidecar(folder)
        except BundleError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None
    for i, source in enumerate(config.sources):
        if isinstance(source, CameraSourceConfig) and camera_kind(source.camera) == "file":
            video = Path(str(source.camera))
            if not video.is_file():
                why = "not a file" if video.exists() else "no such file"
                raise ConfigError(f"{path}: sources[{i}].camera: video file {video}: {why}")


def _resolve_alert_paths(config: Config, base: Path, path: Path) -> None:
    """The sinks' file paths resolved by AlertsConfig, after the checks that name the key of a refused one."""
    for i, sink in enumerate(config.alerts.sinks):
        for key in ("password_file", "ca_file"):
            value = getattr(sink, key, None)
            if value is not None:
                # Expanded as AlertsConfig does ($VAR, then ~), only to name the key of a path the OS refuses.
                _resolve(base, Path(os.path.expandvars(str(value))), path, f"alerts.sinks[{i}].{key}")
        argv = getattr(sink, "argv", None)
        if argv and any("\0" in arg for arg in argv):
            raise ConfigError(f"{path}: alerts.sinks[{i}].argv: contains a NUL byte")
    try:
        config.alerts.resolve_paths(base)
    except (ValueError, RuntimeError, OSError) as exc:  # whatever the checks above did not foresee
        raise ConfigError(f"{path}: alerts.sinks: cannot resolve a path: {_os_reason(exc)}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises ConfigError naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read the config: not UTF-8 text (byte {exc.start})") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ConfigError(f"{path}: cannot read the config: {_os_reason(exc)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{path}: not valid YAML{where}: {_printable(str(problem))}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ConfigError(f"{path}: not valid YAML: {_os_reason(exc)}") from None
    return parse_config(data, path)


def check_writable(config: Config, path: str | Path, create: bool = True) -> None:
    """ConfigError (one line: the file, the key, the folder, the reason) when an output cannot be written.

    `monitor run` calls it with `create` before loading TensorFlow: an output folder the service user cannot
    create or write is a config error (exit 2), not a crash that systemd restarts in a loop. `check-config`
    calls it without `create`: it changes nothing, and refuses what `run` would refuse.
    """
    for key in OUTPUT_KEYS:
        target: Path = getattr(config.output, key)
        folder = target.parent if key == "journal" else target
        reason = _folder_problem(folder, create)
        if reason is None and key == "journal":
            reason = _journal_problem(target, create)
        if reason is not None:
            # The first problem only: the outputs usually share a parent, so the others repeat it.
            raise ConfigError(f"{path}: output.{key}: {reason}")
    check_watched_folders(config, path)


def check_watched_folders(config: Config, path: str | Path) -> None:
    """ConfigError naming `sources[i].folder` when a watched folder is a file or lies under one.

    The source makes a missing folder at start; a file in its way was a traceback from the daemon (at start) or
    a source gone missing (at a reload). Changes nothing.
    """
    for i, source in enumerate(config.sources):
        if isinstance(source, FolderSourceConfig):
            existing = _nearest_existing(source.folder)
            if not existing.is_dir():
                where = "it is a file" if existing == source.folder else f"{existing} is not a folder"
                raise ConfigError(f"{path}: sources[{i}].folder: cannot watch {source.folder}: {where}")


def _nearest_existing(folder: Path) -> Path:
    """`folder` or its nearest ancestor that exists (a missing folder is created under it)."""
    probe = folder
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def _folder_problem(folder: Path, create: bool) -> str | None:
    """Why `folder` cannot hold the daemon's files, or None."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():  # a file (or a dangling link) where a folder must be or be made
        return f"cannot write {folder}: " + ("not a folder" if existing == folder else f"{existing} is not a folder")
    if existing != folder:
        if not create:
            if not os.access(existing, os.W_OK | os.X_OK):
                return f"cannot write {folder}: cannot create it in {existing}: Permission denied"
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot write {folder}: {_os_reason(exc)}"
    try:
        # A real file, not os.access: root passes os.access on a read-only filesystem or an immutable folder.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".monitor-write-check-"):
            pass
    except OSError as exc:
        return f"cannot write {folder}: {_os_reason(exc)}"
    return None


def _journal_problem(journal: Path, create: bool) -> str | None:
    """Why the journal file itself cannot be appended to, or None (its folder is already checked)."""
    if journal.is_dir():
        return f"cannot write {journal}: it is a folder, not a file"
    if not journal.exists():
        return None
    try:
        if create:
            with open(journal, "ab"):  # appends nothing: the journal stays as it is
                pass
        elif not os.access(journal, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        return f"cannot write {journal}: {_os_reason(exc)}"
    return None


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """One line per event, greppable: time, level, logger, message with key=value fields.

    The handler's SafeFormatter escapes control characters in every line, whoever logged it: file names,
    camera URLs and exception texts come from outside and must never split a line or forge one.
    """
    handler = logging.StreamHandler()  # stderr, where systemd's journal collects it
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
