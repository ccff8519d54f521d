"""`make install-service` (scripts/install_service.py): a staged production install checked file by file.

The install is staged under DESTDIR, so neither root nor systemd as PID 1 is needed; systemd's own tools check
what it wrote (systemd-analyze verify on the units, systemd-sysusers and systemd-tmpfiles with --root on the
user and folders) and the daemon's check-config reads the installed configs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install_service.py"
UNITDIR = Path("usr/lib/systemd/system")


def install(destdir: Path | None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(SCRIPT), *(["--destdir", str(destdir)] if destdir else []), *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def dev_monitor() -> str:
    monitor = shutil.which("monitor", path=str(Path(sys.executable).parent))
    assert monitor, "the monitor console script is installed in the dev venv"
    return monitor


@pytest.fixture
def staged(tmp_path) -> Path:
    root = tmp_path / "root"
    install(root, "--no-venv", "--instance", "line2=9109", "--metrics-host", "0.0.0.0")
    return root


def test_a_staged_install_writes_units_user_folders_config_model_and_nothing_else(staged):
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    model_files = [f for f in files if f.startswith("opt/anomaly-monitor/models/default/")]
    assert sorted(Path(f).name for f in model_files) == ["bundle.json", "model.keras"]  # no training report
    assert [f for f in files if f not in model_files] == sorted([
        "etc/anomaly-monitor/config.yaml",
        "etc/anomaly-monitor/line2.yaml",
        "etc/tmpfiles.d/anomaly-monitor-line2.conf",
        "opt/anomaly-monitor/README.md",
        "usr/lib/systemd/system/anomaly-monitor.service",
        "usr/lib/systemd/system/anomaly-monitor@.service",
        "usr/lib/sysusers.d/anomaly-monitor.conf",
        "usr/lib/tmpfiles.d/anomaly-monitor.conf",
    ])
    # The model is the shipped one, byte for byte; the config is not world-readable (alert settings).
    for f in model_files:
        shipped = REPO / "models" / "default" / Path(f).relative_to("opt/anomaly-monitor/models/default")
        assert (staged / f).read_bytes() == shipped.read_bytes()
    assert (staged / "etc/anomaly-monitor/config.yaml").stat().st_mode & 0o777 == 0o640


def test_the_installed_units_start_the_production_venv(staged):
    for name in ("anomaly-monitor.service", "anomaly-monitor@.service"):
        text = (staged / UNITDIR / name).read_text()
        starts = re.findall(r"^ExecStart(?:Pre)?=(\S+)", text, flags=re.M)
        assert starts == ["/opt/anomaly-monitor/venv/bin/monitor"] * 2, name


@pytest.mark.parametrize("name", ["anomaly-monitor.service", "anomaly-monitor@.service"])
def test_the_installed_units_pass_systemd_analyze_verify(staged, tmp_path, name):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is installed by scripts/install-system-deps.sh"
    # verify checks that ExecStart's program exists: point the prefix at the staged tree and put the dev
    # console script where the venv's would be (the venv itself is not built in a staged install).
    prefix = staged / "opt/anomaly-monitor"
    (prefix / "venv/bin").mkdir(parents=True)
    (prefix / "venv/bin/monitor").symlink_to(dev_monitor())
    unit = tmp_path / "units" / name
    unit.parent.mkdir()
    unit.write_text((staged / UNITDIR / name).read_text().replace("/opt/anomaly-monitor", str(prefix)))
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stdout + res.stderr


def test_sysusers_and_tmpfiles_make_the_user_and_its_folders(staged):
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    assert sysusers and tmpfiles, "systemd is installed by scripts/install-system-deps.sh"
    # --root: the user goes into the staged tree's own /etc/passwd, the folders under the staged tree.
    res = subprocess.run([sysusers, f"--root={staged}"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    entry = [x for x in (staged / "etc/passwd").read_text().splitlines() if x.startswith("anomaly-monitor:")]
    assert len(entry) == 1
    uid = int(entry[0].split(":")[2])
    home, shell = entry[0].split(":")[5:7]
    assert home == "/var/lib/anomaly-monitor" and shell.endswith("nologin")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --create sets owners: needs root")  # the user part above still ran
    res = subprocess.run([tmpfiles, f"--root={staged}", "--create"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for folder in ("var/lib/anomaly-monitor", "srv/inspection", "srv/inspection/line2"):
        st = (staged / folder).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o750), folder
    gid = int(entry[0].split(":")[3])
    config = (staged / "etc/anomaly-monitor/line2.yaml").stat()
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, gid, 0o640)


def staged_config(staged: Path, name: str, tmp_path: Path) -> Path:
    """The installed config with its absolute paths moved into the staged tree, for check-config."""
    text = (staged / "etc/anomaly-monitor" / name).read_text()
    for top in ("/opt/", "/var/lib/", "/srv/"):
        text = text.replace(f" {top}", f" {staged}{top}")
    out = tmp_path / name
    out.write_text(text)
    return out


@pytest.mark.parametrize("name", ["config.yaml", "line2.yaml"])
def test_the_installed_configs_pass_check_config(staged, tmp_path, name):
    config = staged_config(staged, name, tmp_path)
    (staged / "srv/inspection").mkdir(parents=True, exist_ok=True)
    res = subprocess.run([dev_monitor(), "check-config", str(config)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_an_instance_config_has_its_own_source_folders_state_and_port(staged):
    main = yaml.safe_load((staged / "etc/anomaly-monitor/config.yaml").read_text())
    line2 = yaml.safe_load((staged / "etc/anomaly-monitor/line2.yaml").read_text())
    assert main["model"] == line2["model"] == "/opt/anomaly-monitor/models/default"
    assert [s["name"] for s in line2["sources"]] == ["line2"]
    assert line2["sources"][0]["folder"] == "/srv/inspection/line2/inbox"
    assert set(line2["output"].values()) >= {"/var/lib/anomaly-monitor/line2/journal.jsonl",
                                             "/var/lib/anomaly-monitor/line2/state"}
    assert main["output"]["journal"] == "/var/lib/anomaly-monitor/journal.jsonl"
    assert (main["metrics"]["port"], line2["metrics"]["port"]) == (9108, 9109)
    assert main["metrics"]["host"] == line2["metrics"]["host"] == "0.0.0.0"
    assert "d /srv/inspection/line2 0750 anomaly-monitor" in (
        staged / "etc/tmpfiles.d/anomaly-monitor-line2.conf").read_text()


def test_another_prefix_is_used_by_units_and_config(tmp_path):
    root = tmp_path / "root"
    install(root, "--no-venv", "--prefix", "/usr/local/anomaly-monitor")
    unit = (root / UNITDIR / "anomaly-monitor.service").read_text()
    assert "ExecStart=/usr/local/anomaly-monitor/venv/bin/monitor run" in unit
    assert "/opt/anomaly-monitor" not in unit
    assert yaml.safe_load((root / "etc/anomaly-monitor/config.yaml").read_text())["model"] == (
        "/usr/local/anomaly-monitor/models/default")
    assert (root / "usr/local/anomaly-monitor/models/default").is_dir()


def test_an_edited_config_is_kept_and_the_new_one_written_beside_it(staged):
    config = staged / "etc/anomaly-monitor/config.yaml"
    edited = config.read_text().replace("level: INFO", "level: DEBUG")
    config.write_text(edited)
    res = install(staged, "--no-venv", "--instance", "line2=9109", "--metrics-host", "0.0.0.0")
    assert config.read_text() == edited
    assert "level: INFO" in (staged / "etc/anomaly-monitor/config.yaml.new").read_text()
    assert f"kept {config}" in res.stdout
    # The unchanged instance config is simply rewritten: no .new beside it.
    assert not (staged / "etc/anomaly-monitor/line2.yaml.new").exists()


@pytest.mark.parametrize("instance, message", [
    ("line2=9108", "port 9108 is taken"),
    ("../x=9109", "expected NAME=PORT"),
    ("line2", "expected NAME=PORT"),
    ("line2=80", "port must be 1024..65535"),
])
def test_a_bad_instance_is_refused_before_anything_is_written(tmp_path, instance, message):
    res = install(tmp_path / "root", "--no-venv", "--instance", instance, check=False)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "root").exists()


def test_a_venv_is_never_staged_under_destdir(tmp_path):
    # Its scripts would name DESTDIR in their #! lines and fail where the tree is installed.
    res = install(tmp_path / "root", check=False)
    assert res.returncode == 2 and "--no-venv" in res.stderr
    assert not (tmp_path / "root").exists()


def test_a_python_under_home_is_refused_for_the_venv():
    # What `make install` made (.venv, pyenv) lives under /root here: ProtectHome= hides it from the service.
    from importlib import util

    spec = util.spec_from_file_location("install_service", SCRIPT)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.hidden_by_protect_home(Path("/root/.pyenv/versions/3.11.9/bin/python3.11"))
    assert module.hidden_by_protect_home(Path("/home/ci/.venv/bin/python"))
    assert not module.hidden_by_protect_home(Path("/usr/bin/python3.11"))


@pytest.mark.slow
def test_the_production_venv_is_made_by_the_system_python_with_runtime_dependencies_only(tmp_path):
    if not Path("/usr/bin/python3").is_file():
        pytest.fail("/usr/bin/python3 is the production Python (Debian package python3-venv)")
    prefix, report = tmp_path / "opt", tmp_path / "report.json"
    # --dry-run: pip resolves every dependency from the configured index, installs nothing (no 600 MB of TF).
    install(None, "--venv-only", "--prefix", str(prefix), "--pip-arg=--dry-run", f"--pip-arg=--report={report}")
    cfg = (prefix / "venv/pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", cfg, flags=re.M), cfg
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert {"anomaly-monitor", "tensorflow", "opencv-python-headless", "prometheus-client"} <= names
    test_only = {"pytest", "pytest-timeout", "hypothesis", "ruff", "aiosmtpd", "mlxtend", "scikit-image",
                 "scikit-learn"}
    assert not names & test_only, names & test_only
