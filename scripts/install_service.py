#!/usr/bin/env python3
"""Install the anomaly monitor as a systemd service: only what runs, in the places a package would use.

    sudo make install-service                                   # or: sudo python3 scripts/install_service.py
    make install-service DESTDIR=/tmp/root NO_VENV=1            # a staged tree, no root needed

Writes, each under DESTDIR when given:
  PREFIX/venv                     a virtual environment with the runtime dependencies only (`pip install SRC`,
                                  no extras), made by a system Python (/usr/bin/python3) the service user can
                                  read: a venv under /root or /home is hidden from the service by ProtectHome=
  PREFIX/models/default           the shipped model bundle; PREFIX/README.md (the units' Documentation=)
  /etc/anomaly-monitor/config.yaml  the shipped config.yaml with absolute production paths
  /etc/anomaly-monitor/NAME.yaml  one per --instance NAME=PORT, for anomaly-monitor@NAME.service
  UNITDIR/anomaly-monitor.service, anomaly-monitor@.service   pointing at PREFIX
  SYSUSERSDIR/anomaly-monitor.conf, TMPFILESDIR/anomaly-monitor.conf   the service user, folders and modes
  /etc/tmpfiles.d/anomaly-monitor-NAME.conf   each instance's watched-folder root

A config that already exists and differs is never overwritten (an operator's edits): the new one is written
beside it as FILE.new, as dpkg does. Without DESTDIR (a real install) the user and folders are then made with
systemd-sysusers and systemd-tmpfiles, and systemd is told to reload its units; --no-activate skips that.

Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "anomaly-monitor"
SERVICE_USER = "anomaly-monitor"
# Fixed, not options: the units' StateDirectory= is relative to /var/lib, and the sysusers and tmpfiles files
# name these paths too.
SYSCONFDIR = Path("/etc/anomaly-monitor")
STATEDIR = Path("/var/lib/anomaly-monitor")
INBOXDIR = Path("/srv/inspection")
LOCAL_TMPFILESDIR = Path("/etc/tmpfiles.d")
SHIPPED_PREFIX = "/opt/anomaly-monitor"  # what the units in systemd/ say; rewritten to --prefix
DEFAULT_PORT = 9108
# The daemon's own rule for source names (a folder name under quarantine and state), and systemd's for an
# instance: both must hold, since the instance name becomes the source name and the folder names.
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class InstallError(Exception):
    """A refusal with a one-line reason; nothing half-written is left behind for it."""


def production_config(shipped: str, unit: str, prefix: Path, line: str, state: Path, port: int, host: str) -> str:
    """The shipped config.yaml with absolute production paths, its comments kept for the operator.

    Each rewritten key must occur exactly once: a shipped config that changed shape fails the install (and its
    test) instead of leaving a relative path that would resolve under /etc.
    """
    rules = [
        (r"^(model:\s*)models/default\b", rf"\g<1>{prefix}/models/default"),
        (r"^(  - name:\s*)line1\b", rf"\g<1>{line}"),
        (r"^(    folder:\s*)inbox\b", rf"\g<1>{INBOXDIR / line / 'inbox'}"),
        (r"^(  journal:\s*)var/journal\.jsonl\b", rf"\g<1>{state / 'journal.jsonl'}"),
        (r"^(  evidence:\s*)var/evidence\b", rf"\g<1>{state / 'evidence'}"),
        (r"^(  quarantine:\s*)var/quarantine\b", rf"\g<1>{state / 'quarantine'}"),
        (r"^(  state:\s*)var/state\b", rf"\g<1>{state / 'state'}"),
        (r"^(  host:\s*)127\.0\.0\.1\b", rf"\g<1>{host}"),
        (r"^(  port:\s*)9108\b", rf"\g<1>{port}"),
    ]
    text = shipped
    for pattern, repl in rules:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        if n != 1:
            raise InstallError(f"config.yaml: expected one line matching {pattern!r}, found {n}")
    header = (f"# Installed by scripts/install_service.py for {unit}: absolute paths, since the service may\n"
              f"# write only under {state} and {INBOXDIR / line} (ProtectSystem=strict).\n")
    return header + text


def unit_text(template: str, prefix: Path) -> str:
    return template.replace(SHIPPED_PREFIX, str(prefix))


def instance_tmpfiles(line: str) -> str:
    return (f"# The watched folders of anomaly-monitor@{line}.service: its ReadWritePaths= needs this to exist.\n"
            f"d {INBOXDIR / line} 0750 {SERVICE_USER} {SERVICE_USER} -\n")


class Installer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.destdir = Path(args.destdir) if args.destdir else None
        self.prefix = Path(args.prefix)
        self.written: list[Path] = []
        self.kept: list[Path] = []

    def dest(self, path: Path) -> Path:
        """Where an absolute target path lands: under DESTDIR when staging."""
        return self.destdir / path.relative_to("/") if self.destdir else path

    def write(self, path: Path, text: str, mode: int = 0o644, keep_edits: bool = False) -> None:
        target = self.dest(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if keep_edits and target.exists() and target.read_text() != text:
            target = target.with_name(target.name + ".new")
            self.kept.append(self.dest(path))
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        os.replace(tmp, target)
        self.written.append(target)

    def copy_tree(self, src: Path, path: Path) -> None:
        target = self.dest(path)
        if target.exists():
            shutil.rmtree(target)
        # The bundle's training report (figures, HTML) is for people reviewing a model; the daemon never reads it.
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("report"))
        # Readable by the service user whatever the umask of the person installing.
        for p in [target, *target.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        self.written.append(target)

    def run(self) -> None:
        args = self.args
        instances = parse_instances(args.instance)
        if args.venv_only and args.no_venv:
            raise InstallError("--venv-only and --no-venv leave nothing to do")
        if not args.no_venv:
            self.check_python()
        if args.venv_only:
            self.make_venv()
            return
        shipped = (REPO / "config.yaml").read_text()
        for unit in ("anomaly-monitor.service", "anomaly-monitor@.service"):
            self.write(Path(args.unitdir) / unit, unit_text((REPO / "systemd" / unit).read_text(), self.prefix))
        self.write(Path(args.sysusersdir) / f"{NAME}.conf",
                   (REPO / "systemd" / "sysusers.d" / f"{NAME}.conf").read_text())
        self.write(Path(args.tmpfilesdir) / f"{NAME}.conf",
                   (REPO / "systemd" / "tmpfiles.d" / f"{NAME}.conf").read_text())
        self.write(SYSCONFDIR / "config.yaml",
                   production_config(shipped, f"{NAME}.service", self.prefix, "line1", STATEDIR, DEFAULT_PORT,
                                     args.metrics_host),
                   mode=0o640, keep_edits=True)
        for line, port in instances:
            self.write(SYSCONFDIR / f"{line}.yaml",
                       production_config(shipped, f"{NAME}@{line}.service", self.prefix, line, STATEDIR / line, port,
                                         args.metrics_host),
                       mode=0o640, keep_edits=True)
            self.write(LOCAL_TMPFILESDIR / f"{NAME}-{line}.conf", instance_tmpfiles(line))
        self.copy_tree(REPO / "models" / "default", self.prefix / "models" / "default")
        self.write(self.prefix / "README.md", (REPO / "README.md").read_text())
        if not args.no_venv:
            self.make_venv()
        if self.destdir is None and not args.no_activate:
            self.activate(instances)

    def check_python(self) -> None:
        if self.destdir is not None:
            # A venv's scripts name its own absolute path: one built under DESTDIR would not run where installed.
            raise InstallError("a virtual environment cannot be staged under DESTDIR (its scripts hold absolute "
                               "paths): use --no-venv with --destdir, and build the venv on the target machine")
        python = Path(self.args.python)
        if not python.is_file():
            raise InstallError(f"{python}: no such Python (Debian 12: apt-get install python3 python3-venv)")
        real = python.resolve()
        if hidden_by_protect_home(real):
            raise InstallError(f"{python} lives in {real.parent}: the service's ProtectHome= hides it; "
                               "use a system Python such as /usr/bin/python3")
        res = subprocess.run([str(python), "-c", "import sys; print(sys.version_info >= (3, 11))"],
                             capture_output=True, text=True)
        if res.stdout.strip() != "True":
            raise InstallError(f"{python}: Python 3.11 or newer is needed")

    def make_venv(self) -> None:
        venv = self.prefix / "venv"
        # Kept when it exists: pip replaces the package and adds what changed, so a reinstall is quick.
        if not (venv / "bin" / "python").exists():
            subprocess.run([self.args.python, "-m", "venv", str(venv)], check=True)
        # No extras: the test tools (pytest, ruff, hypothesis, aiosmtpd) and the data packages stay out.
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        *self.args.pip_arg, str(REPO)], check=True)
        if "--dry-run" not in self.args.pip_arg and not (venv / "bin" / "monitor").exists():
            raise InstallError(f"{venv}/bin/monitor is missing after pip install")
        self.written.append(venv)

    def activate(self, instances: list[tuple[str, int]]) -> None:
        tmpfiles = [Path(self.args.tmpfilesdir) / f"{NAME}.conf",
                    *(LOCAL_TMPFILESDIR / f"{NAME}-{line}.conf" for line, _ in instances)]
        subprocess.run(["systemd-sysusers", str(Path(self.args.sysusersdir) / f"{NAME}.conf")], check=True)
        subprocess.run(["systemd-tmpfiles", "--create", *map(str, tmpfiles)], check=True)
        if Path("/run/systemd/system").is_dir():  # systemd is PID 1 (not in a container build)
            subprocess.run(["systemctl", "daemon-reload"], check=True)


def hidden_by_protect_home(path: Path) -> bool:
    """True for a path ProtectHome=yes makes invisible to the service (pyenv, a dev venv, a user's Python)."""
    return any(path.is_relative_to(top) for top in ("/root", "/home", "/run/user"))


def parse_instances(values: list[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    ports = {DEFAULT_PORT}
    for value in values:
        line, sep, port_text = value.partition("=")
        if not sep or not INSTANCE_NAME.match(line) or not port_text.isdigit():
            raise InstallError(f"--instance {value!r}: expected NAME=PORT, NAME of letters, digits and _.-")
        port = int(port_text)
        if not 1024 <= port <= 65535:
            raise InstallError(f"--instance {value!r}: port must be 1024..65535")
        if port in ports:
            # Two daemons on one port: the second fails to start, so refuse it here where it is clear.
            raise InstallError(f"--instance {value!r}: port {port} is taken by another daemon on this machine")
        if line in {name for name, _ in out}:
            raise InstallError(f"--instance {value!r}: {line} given twice")
        ports.add(port)
        out.append((line, port))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--destdir", default="", help="stage everything under this folder (packaging, tests)")
    parser.add_argument("--prefix", default=SHIPPED_PREFIX, help="venv, models, README (default %(default)s)")
    parser.add_argument("--unitdir", default="/usr/lib/systemd/system")
    parser.add_argument("--sysusersdir", default="/usr/lib/sysusers.d")
    parser.add_argument("--tmpfilesdir", default="/usr/lib/tmpfiles.d")
    parser.add_argument("--python", default="/usr/bin/python3", help="the Python the venv is made with")
    parser.add_argument("--pip-arg", action="append", default=[],
                        help="passed to pip install, e.g. --pip-arg=--no-index --pip-arg=--find-links=/media/wheels")
    parser.add_argument("--venv-only", action="store_true",
                        help="only build or update PREFIX/venv (a software update that leaves configs alone)")
    parser.add_argument("--no-venv", action="store_true", help="skip the venv (staged trees, tests)")
    parser.add_argument("--no-activate", action="store_true",
                        help="do not run systemd-sysusers, systemd-tmpfiles and systemctl daemon-reload")
    parser.add_argument("--instance", action="append", default=[], metavar="NAME=PORT",
                        help="also write /etc/anomaly-monitor/NAME.yaml for anomaly-monitor@NAME (metrics on PORT)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address /metrics listens on; 0.0.0.0 lets a central Prometheus scrape it")
    args = parser.parse_args(argv)
    installer = Installer(args)
    try:
        installer.run()
    except InstallError as exc:
        print(f"install_service: {exc}", file=sys.stderr)
        return 2
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"install_service: {exc}", file=sys.stderr)
        return 1
    for path in installer.written:
        print(f"installed {path}")
    for path in installer.kept:
        print(f"kept {path} (it differs from the new one: compare with {path.name}.new)")
    if installer.destdir is None:
        print("next: edit /etc/anomaly-monitor/config.yaml, then systemctl enable --now anomaly-monitor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
