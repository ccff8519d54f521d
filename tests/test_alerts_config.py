"""The `alerts:` config section: every sink type, clear errors, no secrets in the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parent.parent

FULL = """
sources: [{name: line1, folder: inbox}]
alerts:
  backoff_initial_s: 1
  max_age_s: 3600
  sinks:
    - {type: webhook, name: chat, url: "https://chat.example/hooks/x", format: mattermost,
       headers_env: {Authorization: CHAT_TOKEN}, events: [anomaly, camera_lost], cooldown_s: 30}
    - {type: webhook, name: slack, url_env: SLACK_WEBHOOK_URL, format: slack}
    - {type: email, name: qa-mail, host: smtp.example, security: tls, username: monitor,
       password_file: secrets/smtp, sender: monitor@example, to: [qa@example]}
    - {type: apprise, name: push, urls_env: [APPRISE_URL]}
    - {type: alertmanager, name: am, url: "http://127.0.0.1:9093", labels: {site: plant-a}}
    - {type: mqtt, name: plc, host: broker.local, events: [anomaly, daemon_start, daemon_stop]}
    - {type: command, name: hook, argv: [./hooks/on-anomaly.sh], timeout_s: 5}
"""


def _parse(text: str, tmp_path: Path):
    return parse_config(yaml.safe_load(text), tmp_path / "config.yaml")


def test_every_sink_type_parses(tmp_path: Path) -> None:
    config = _parse(FULL, tmp_path)
    assert [s.type for s in config.alerts.sinks] == [
        "webhook", "webhook", "email", "apprise", "alertmanager", "mqtt", "command"]
    assert config.alerts.sinks[2].effective_port == 465


def test_relative_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = _parse(FULL, tmp_path)
    assert config.alerts.sinks[2].password_file == tmp_path / "secrets" / "smtp"
    assert config.alerts.sinks[6].argv[0] == str(tmp_path / "hooks" / "on-anomaly.sh")


def test_no_alerts_section_means_no_sinks(tmp_path: Path) -> None:
    assert _parse("sources: [{name: a, folder: in}]", tmp_path).alerts.sinks == []


@pytest.mark.parametrize(
    ("sink", "key", "message"),
    [
        ("{type: email, name: m, host: h, sender: s, to: [x], password: hunter2}", "sinks[0].password",
         "unknown key"),
        ("{type: webhook, name: w, url: 'http://x', headers_env: {Authorization: 'not a var'}}",
         "headers_env.Authorization", "pattern"),
        ("{type: pager, name: p}", "alerts.sinks[0]", "type"),
        ("{type: webhook, name: w, url: 'http://x', events: [anomaly, exploded]}", "sinks[0].events[1]",
         "anomaly"),
        ("{type: webhook, name: ../etc, url: 'http://x'}", "name", "pattern"),
        ("{type: webhook, name: w}", "alerts.sinks[0]", "url"),
        ("{type: email, name: m, host: h, sender: s, to: []}", "to", "at least 1"),
        ("{type: mqtt, name: q, host: h, topic: 'plant/{line}'}", "topic", "only {source} and {event}"),
    ],
)
def test_bad_sinks_are_errors_naming_the_key(tmp_path: Path, sink: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(f"sources: [{{name: a, folder: in}}]\nalerts: {{sinks: [{sink}]}}", tmp_path)
    text = str(err.value)
    assert "config.yaml: alerts.sinks[0]" in text and key in text and message in text


def test_sink_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sink names must be unique, repeated: w"):
        _parse("sources: [{name: a, folder: in}]\nalerts: {sinks: [{type: command, name: w, argv: [x]}, "
               "{type: command, name: w, argv: [y]}]}", tmp_path)


def test_every_sink_type_in_the_table_is_its_config_class_type(tmp_path: Path) -> None:
    from typing import get_args

    from monitor.alerts.config import SINK_TYPES, SINKS

    assert tuple(SINKS) == SINK_TYPES
    for name, entry in SINKS.items():
        assert get_args(entry.config.model_fields["type"].annotation) == (name,)


def test_build_sink_makes_the_implementation_the_table_names(tmp_path: Path) -> None:
    from monitor.alerts.base import Sink, build_sink
    from monitor.alerts.config import SINKS

    for sink_config in _parse(FULL, tmp_path).alerts.sinks:
        sink = build_sink(sink_config)
        assert isinstance(sink, Sink) and sink.config is sink_config
        assert f"{type(sink).__module__}:{type(sink).__name__}" == SINKS[sink_config.type].impl


def test_check_config_imports_no_sink_implementation(tmp_path: Path, subprocess_env: dict) -> None:
    """paho and apprise take long to import: validating a config must not need them."""
    path = tmp_path / "config.yaml"
    path.write_text(FULL)
    # What `monitor check-config` runs: the CLI module, then load_config (the model commands aside).
    script = ("import sys, monitor.cli, monitor.config; config = monitor.config.load_config(sys.argv[1]); "
              "assert {s.type for s in config.alerts.sinks} >= {'mqtt', 'apprise'}; "
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('paho', 'apprise') "
              "or m in ('monitor.alerts.mqtt', 'monitor.alerts.apprise_sink')); "
              "print('imported:', heavy)")
    res = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                         env=subprocess_env, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "imported: []" in res.stdout
