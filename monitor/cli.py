"""The `monitor` command line: run, check-config, test-alert, and the model commands."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from monitor import __version__
from monitor.config import Config, ConfigError, check_inputs, check_writable, load_config, setup_logging
from monitor.files import NotRegularFile

log = logging.getLogger("monitor")


def quiet_tensorflow() -> None:
    """Silence TensorFlow's start-up noise (oneDNN, CUDA probing, absl) unless the user chose a level.

    Must run before TensorFlow is imported: it reads these once, at import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


# Packages the daemon never uses that Keras imports whenever they are installed: its scikit-learn wrapper, its
# pandas data adapter (both from the project's `data` extra, which `make run` installs with the tests) and its
# image-gallery plot (matplotlib, which the training report needs). They were 1.5-2 s of a 5 s start here and
# about 80 MB of resident memory. None in sys.modules makes `import` raise ImportError, which Keras takes for "not
# installed"; `train`, `score` and the benchmarks are not affected (only `run` and `check-config` call it).
UNUSED_BY_THE_DAEMON = ("sklearn", "pandas", "matplotlib")


def skip_unused_imports() -> None:
    """Keep Keras from importing UNUSED_BY_THE_DAEMON in this process; before TensorFlow and Keras are imported."""
    for name in UNUSED_BY_THE_DAEMON:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras, and let it probe its devices, with file descriptor 2 pointed at /dev/null,
    when the log level asks for quiet (TF_CPP_MIN_LOG_LEVEL >= 1, our default 2).

    TensorFlow 2.21 writes its start-up lines ("oneDNN custom operations are on", "Could not find cuda
    drivers") from C++ before absl's logging is set up, and those ignore TF_CPP_MIN_LOG_LEVEL. Python errors
    are raised, not printed, so nothing that matters is hidden; no other thread runs yet at this point.
    """
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        import keras  # noqa: F401
        import tensorflow

        # The first device query probes CUDA, and on a machine without an NVIDIA driver that prints "failed call
        # to cuInit: CUDA error" at ERROR level: alarming in a line PC's journal, and expected there. Where a
        # driver is installed, a failing probe is a fault worth its line: it is left to run later, unmuted.
        if not os.path.exists("/proc/driver/nvidia/version"):
            tensorflow.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _load(path: str, outputs: bool = False, create: bool = False) -> Config | None:
    """The config, or None after printing why it cannot be used (callers exit 2).

    With `outputs`, the output folders must also be writable (`create`: made if missing, as `run` needs),
    and the inputs usable: every model bundle's sidecar valid, every video file there (`check_inputs`).
    """
    try:
        config = load_config(path)
        if outputs:
            _check_journal_file(config, path)
            check_writable(config, path, create=create)
            check_inputs(config, path)
        return config
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    except (ValueError, RuntimeError, OSError, RecursionError) as exc:
        # load_config turns what the OS refuses into ConfigError; this is the net under it, so that a case
        # nobody foresaw is still exit 2 and one line, not a traceback and a restart loop.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {path}: {type(exc).__name__}: {reason}".rstrip(": "), file=sys.stderr)
        return None


def _check_journal_file(config: Config, path: str) -> None:
    """ConfigError when output.journal is a FIFO, a socket or a device.

    Checked first and with stat alone: opening such a path may block for ever (a FIFO without a reader), the
    output check's test append included. A folder is left to check_writable, which says so in its words.
    """
    journal = config.output.journal
    try:
        mode = os.stat(journal).st_mode
    except OSError:
        return  # missing (created later) or not reachable: check_writable says why
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = NotRegularFile(journal, mode).kind
        raise ConfigError(f"{path}: output.journal: not a regular file: {journal} is a {kind}")


def _cmd_check_config(args: argparse.Namespace) -> int:
    # The same output check as `run`, minus creating folders: check-config tells what run would refuse.
    # Reading a sidecar imports TensorFlow (its score names live beside the TensorFlow code): quietly.
    skip_unused_imports()
    import_tensorflow_quietly()
    config = _load(args.config, outputs=True, create=False)
    if config is None:
        return 2
    models = ", ".join(f"{name}={folder}" for name, folder in config.models.items())
    print(f"{args.config}: valid ({len(config.sources)} sources, models: {models})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    # Outputs are checked before the models load: an unwritable folder is a config error (exit 2, which the
    # systemd unit does not restart), not a crash halfway through start-up. Checking the bundles' sidecars
    # imports TensorFlow, so it is imported first, quietly: its C++ start-up lines (oneDNN, CUDA probing) went to
    # the journal at every start.
    skip_unused_imports()
    import_tensorflow_quietly()
    config = _load(args.config, outputs=True, create=True)
    if config is None:
        return 2
    setup_logging(args.log_level or config.logging.level)
    from monitor.daemon import StartupError, run
    from monitor.model.bundle import BundleError

    try:
        return run(config, config_path=Path(args.config).resolve())
    except (BundleError, StartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - exit code 1 with the reason, not a bare traceback
        log.exception("daemon_failed")
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _cmd_test_alert(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    setup_logging(args.log_level or "WARNING")
    if not config.alerts.sinks:
        print(f"{args.config}: no alert sinks configured")
        return 1
    from monitor.alerts.dispatcher import send_test_alert

    results = send_test_alert(config.alerts)
    for name, ok, detail in results:
        print(f"{name}: {'ok' if ok else 'FAILED'} {detail}".rstrip())
    return 0 if all(ok for _, ok, _ in results) else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="monitor", description="Anomaly monitor for inspection lines.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon in the foreground until SIGTERM/SIGINT")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override logging.level")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("config", help="YAML config file")
    p.set_defaults(func=_cmd_check_config)

    # `monitor ctl ...` is handed to monitor/http/ctl.py whole in main(): its options cannot pass an argparse
    # sub-command untouched. Listed here so that `monitor --help` shows it.
    sub.add_parser("ctl", add_help=False,
                   help="talk to the running daemon: status, pause NAME, resume NAME, reload (monitor ctl --help)")

    p = sub.add_parser("test-alert", help="send one test alert to every configured sink")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_test_alert)

    from monitor.training.cli import register

    register(sub)
    from monitor.replay import register as register_replay

    register_replay(sub)
    from monitor.compare import register as register_compare

    register_compare(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `monitor` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        from monitor.http.ctl import main as ctl_main

        return ctl_main(argv[1:])
    quiet_tensorflow()
    args = build_parser().parse_args(argv)
    if getattr(args, "tensorflow", False):  # train, score, info, evaluate: TensorFlow's start-up lines go too
        import_tensorflow_quietly()
    return int(args.func(args) or 0)
