"""Config validation: errors name the file and the key; paths resolve against the config file."""

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import CameraSourceConfig, ConfigError, FolderSourceConfig, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(text)
    return path


def test_shipped_config_is_valid():
    config = load_config(REPO / "config.yaml")
    assert config.model == (REPO / "models/default").resolve()
    assert config.sources[0].folder == (REPO / "inbox").resolve()


def test_the_shipped_config_lists_every_folder_source_key_with_its_default():
    import yaml

    shipped = yaml.safe_load((REPO / "config.yaml").read_text())["sources"][0]
    assert set(shipped) == set(FolderSourceConfig.model_fields)
    defaults = FolderSourceConfig(name="x", folder=Path("in"))
    loaded = load_config(REPO / "config.yaml").sources[0]
    for key in set(shipped) - {"name", "folder"}:
        assert getattr(loaded, key) == getattr(defaults, key), key


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    config = load_config(write(tmp_path, "sources: [{name: a, folder: in}]\noutput: {journal: j/x.jsonl}\n"))
    assert config.sources[0].folder == tmp_path / "in"
    assert config.output.journal == tmp_path / "j/x.jsonl"
    assert config.model == tmp_path / "models/default"


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    path = write(tmp_path, "sources: [{name: a, folder: in}]\nbatching: {max_batch: 8, max_wiat_ms: 5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "batching.max_wiat_ms: unknown key" in str(err.value)


def test_bad_value_names_the_key_inside_a_list(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: a, folder: in}\n  - {name: b, camera: 0, fps: -1}\n")
    with pytest.raises(ConfigError, match=r"sources\[1\]\.fps: Input should be greater than 0"):
        load_config(path)


def test_a_source_needs_a_folder_or_a_camera(tmp_path):
    with pytest.raises(ConfigError, match=r"sources\[0\]: a source needs either"):
        load_config(write(tmp_path, "sources: [{name: a}]\n"))


def test_sources_are_told_apart_by_their_key(tmp_path):
    config = load_config(write(tmp_path, "sources: [{name: a, folder: in}, {name: b, camera: 'rtsp://h/s'}]\n"))
    assert isinstance(config.sources[0], FolderSourceConfig)
    assert isinstance(config.sources[1], CameraSourceConfig)


def test_video_file_cameras_resolve_against_the_config_file(tmp_path):
    config = load_config(write(tmp_path, "sources: [{name: b, camera: clips/a.mp4}, {name: c, camera: 0}]\n"))
    assert config.sources[0].camera == str(tmp_path / "clips/a.mp4")
    assert config.sources[1].camera == 0


def test_duplicate_source_names_are_an_error(tmp_path):
    with pytest.raises(ConfigError, match="repeated: a"):
        load_config(write(tmp_path, "sources: [{name: a, folder: x}, {name: a, folder: y}]\n"))


def test_fixed_and_quantile_thresholds_exclude_each_other(tmp_path):
    text = "sources: [{name: a, folder: x}]\nthreshold: {fixed: 0.1, quantile: 0.9}\n"
    with pytest.raises(ConfigError, match="threshold: Value error, set either 'fixed' or 'quantile'"):
        load_config(write(tmp_path, text))


def test_numbers_without_a_dot_are_read_as_numbers(tmp_path):
    # PyYAML reads 1e-9 as a string; the schema must coerce it.
    config = load_config(write(tmp_path, "sources: [{name: a, folder: x}]\nthreshold: {fixed: 1e-9}\n"))
    assert config.threshold.fixed == 1e-9


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 3"):
        load_config(write(tmp_path, "sources:\n  - {name: a, folder: [x\nthreshold: {}\n"))


def test_empty_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "nope.yaml")


def test_check_config_command_exit_codes(tmp_path):
    good = write(tmp_path, f"model: {REPO / 'models/default'}\nsources: [{{name: a, folder: x}}]\n")
    ok = subprocess.run([sys.executable, "-m", "monitor", "check-config", str(good)], capture_output=True,
                        text=True, cwd=REPO, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [{name: a, folder: x}]\nmetrics: {port: 99999}\n")
    res = subprocess.run([sys.executable, "-m", "monitor", "check-config", str(bad)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2
    assert f"{bad}: metrics.port:" in res.stderr


def _commented_block(text: str, first: str, cont: str) -> list[str]:
    block: list[str] = []
    for line in text.splitlines():
        if line.startswith(first) or (block and line.startswith(cont)):
            block.append(line.replace("#", " ", 1))
        elif block:
            break
    return block


def test_commented_examples_in_the_shipped_config_are_valid():
    import yaml

    from monitor.config import parse_config

    text = (REPO / "config.yaml").read_text()
    data = yaml.safe_load(text)
    sinks = yaml.safe_load("\n".join(x[4:] for x in _commented_block(text, "  # - {type:", "  #    ")))
    camera = yaml.safe_load("\n".join(_commented_block(text, "  # - name: cam1", "  #   ")))
    assert len(sinks) == 6 and camera[0]["name"] == "cam1"
    data["alerts"]["sinks"] = sinks
    data["sources"] += camera
    config = parse_config(data, REPO / "config.yaml")
    assert [s.type for s in config.alerts.sinks] == ["webhook", "email", "apprise", "alertmanager", "mqtt", "command"]
    assert config.camera_sources[0].camera == 0


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../up", "-x", "", "x" * 65, "a b", "é"])
def test_a_source_name_that_could_leave_its_folder_is_refused_naming_the_key(tmp_path, name):
    with pytest.raises(ConfigError, match=r"conf\.yaml: sources\[0\]\.name: String should match pattern"):
        load_config(write(tmp_path, f"sources: [{{name: {name!r}, folder: in}}]\n"))


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b"])
def test_a_sink_name_follows_the_same_rule(tmp_path, name):
    text = (f"sources: [{{name: a, folder: in}}]\n"
            f"alerts: {{sinks: [{{name: {name!r}, type: command, argv: [cat]}}]}}\n")
    with pytest.raises(ConfigError, match=r"alerts\.sinks\[0\]\.name: String should match pattern"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("name", ["line1", "cam_2", "a.b-c", "_x", "9", "x" * 64])
def test_names_of_letters_digits_and_dot_dash_underscore_are_accepted(tmp_path, name):
    config = load_config(write(tmp_path, f"sources: [{{name: {name!r}, folder: in}}]\n"))
    assert config.sources[0].name == name
