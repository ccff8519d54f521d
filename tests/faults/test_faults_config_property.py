"""Issue 11, config documents: any document is a Config or a ConfigError whose lines each name the file.

Property-based (hypothesis) over YAML-ish documents built from the real schema's keys and hostile values,
in-process through parse_config and load_config; and `monitor check-config` on a few nasty files.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from monitor.config import Config, ConfigError, load_config, parse_config


def _schema_keys(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every key of the config schema, nested sections and sink types included."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    keys = set(model.model_fields)
    stack = [f.annotation for f in model.model_fields.values()]
    while stack:
        annotation = stack.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _schema_keys(annotation, seen)
        stack.extend(typing.get_args(annotation))
    return keys


KEYS = sorted(_schema_keys(Config))
HOSTILE_TEXT = ["", ".", "..", "in", "~", "~no_such_user_xyz/x", "a\0b", "line\nbreak", "/" + "d" * 300,
                "/".join(["p" * 250] * 20), "rtsp://h/s", "0", "/dev/video0", "$HOME/x", "é",
                "webhook", "email", "command", "mqtt", "apprise", "alertmanager", "DEBUG", "tcp", "shared"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=20),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.sampled_from(HOSTILE_TEXT))
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=30,
)
source = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["a", "b", "line1"]), scalars)},
    optional={"folder": values, "camera": values, **{k: values for k in ("fps", "roi", "extensions", "settle_ms",
                                                                           "recursive", "loop", "stable_s")}},
)
documents = st.one_of(
    st.dictionaries(keys, values, max_size=8),
    st.fixed_dictionaries({"sources": st.lists(source, min_size=0, max_size=3)},
                          optional={k: values for k in ("model", "output", "threshold", "batching", "metrics",
                                                        "logging", "alerts")}),
    values,
)
CONFIG_PATH = Path("/nonexistent-monitor-tests/conf.yaml")  # parse_config only computes paths from it


def _assert_lines_name_the_file(error: ConfigError, path: Path) -> None:
    lines = str(error).split("\n")
    assert lines and all(line.startswith(f"{path}: ") for line in lines), str(error)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_parse_config_gives_a_config_or_a_config_error(document: object) -> None:
    try:
        config = parse_config(document, CONFIG_PATH)
    except ConfigError as exc:
        _assert_lines_name_the_file(exc, CONFIG_PATH)
    else:
        assert isinstance(config, Config)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.one_of(documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=200)))
def test_load_config_gives_a_config_or_a_config_error(scratch: Path, text: str) -> None:
    path = scratch / "conf.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        config = load_config(path)
    except ConfigError as exc:
        _assert_lines_name_the_file(exc, path)
    else:
        assert isinstance(config, Config)


NASTY_FILES = {
    "nul.yaml": b'sources: [{name: a, folder: "in\\0x"}]\n',
    "tilde.yaml": b"sources: [{name: a, folder: ~no_such_user_xyz/in}]\n",
    "deep.yaml": b"sources: [{name: a, folder: in}]\nx: " + b"[" * 10_000 + b"]" * 10_000 + b"\n",
    "binary.yaml": b"\x00\xff\xfe garbage \x89PNG",
    "list.yaml": b"- a\n- b\n",
    "newline_key.yaml": b'sources: [{name: a, folder: in}]\n"a\\nb": 1\n',
    "tab.yaml": b"sources:\n\t- {name: a}\n",
}


@pytest.mark.parametrize("name", sorted(NASTY_FILES))
def test_check_config_on_nasty_files_exits_2_without_a_traceback(tmp_path: Path, subprocess_env: dict,
                                                                 name: str) -> None:
    path = tmp_path / name
    path.write_bytes(NASTY_FILES[name])
    res = subprocess.run([sys.executable, "-m", "monitor", "check-config", str(path)], capture_output=True,
                         text=True, cwd=tmp_path, env=subprocess_env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith(f"error: {path}: "), res.stderr
    assert all(line.startswith((f"error: {path}: ", f"{path}: ")) for line in lines), res.stderr
