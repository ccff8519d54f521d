"""The review page's what-if panel and its API against a real in-process daemon started from a config file: the
figures are monitor.replay's on the daemon's journal; applying a threshold writes the config, journals
`threshold_changed` and reloads the running daemon; invalid settings and foreign requests write nothing."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from test_review_api import TOKEN, Served, journal_records, label_lines, monkeypatch_module  # noqa: F401

from monitor.config import ThresholdConfig, load_config
from monitor.daemon import Daemon
from monitor.http.control import DaemonController
from monitor.http.server import HttpServer
from monitor.model.bundle import load_bundle
from monitor.replay import read_calibration, read_records, replay

pytestmark = pytest.mark.timeout(240)

CONFIG = """\
# what-if tests: this comment must survive an applied threshold
model: {bundle}
sources:
  - name: line1
    folder: inbox1
    settle_ms: 20
  - name: line2
    folder: inbox2
    settle_ms: 20
metrics:
  enabled: false
threshold:
  window: 500  # a short window: the replay warms it from the bundle as the daemon did
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle, monkeypatch_module) -> Iterator[Served]:  # noqa: F811
    """A daemon started from a config file (so that it can reload), with normal and anomalous verdicts on two
    sources and a label of each kind."""
    workdir = tmp_path_factory.mktemp("whatif-daemon")
    path = workdir / "config.yaml"
    path.write_text(CONFIG.format(bundle=tiny_bundle))
    daemon = Daemon(load_config(path), load_bundle(tiny_bundle), config_path=path)
    server = HttpServer("127.0.0.1", 0, DaemonController(daemon))
    server.start()
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
    waiter.start()
    s = Served(daemon, server)
    for source in ("line1", "line2"):
        normals = [s.drop(source, anomalous=False) for _ in range(6)]
        anomalies = [s.drop(source, anomalous=True) for _ in range(2)]
        for record, label in ((anomalies[0], "defect"), (anomalies[1], "false_alarm"),
                              (normals[0], "missed_defect")):
            answer = requests.post(f"{s.url}/api/verdicts/{record['id']}/label", json={"label": label}, timeout=10)
            assert answer.status_code == 200
    yield s
    daemon.stop()
    waiter.join(30)
    server.stop()
    assert server.join(5)


def config_path(served: Served) -> Path:
    return served.daemon.config_path


def expected(served: Served, bundle: Path, changes: dict, **kw) -> dict:
    """monitor.replay's own answer on the daemon's journal, calibrated from the bundle's sidecar."""
    config = load_config(config_path(served))
    settings = ThresholdConfig.model_validate({**config.threshold.model_dump(), **changes})
    # The API names a bundle by its folder, never its full path.
    cal = dataclasses.replace(read_calibration(bundle), bundle=Path(bundle).name)
    result = replay(read_records(config.output.journal), settings, {s.name: cal for s in config.sources}, **kw)
    return result.to_json()


def whatif(served: Served, **params) -> requests.Response:
    return requests.get(f"{served.url}/api/whatif", params=params, timeout=30)


def figures(answer: dict) -> dict:
    """The API's answer without what it adds to monitor.replay's (flip counts, the list, journal counts)."""
    out = {k: v for k, v in answer.items()
           if k not in ("journal", "config", "changes", "source", "flips", "changed", "changed_total")}
    out["sources"] = {n: {k: v for k, v in s.items() if k != "flips"} for n, s in answer["sources"].items()}
    return out


def threshold_events(served: Served) -> list[dict]:
    return [r for r in journal_records(served.daemon) if r.get("event") == "threshold_changed"]


def status_threshold(served: Served, source: str = "line1") -> dict:
    return requests.get(f"{served.url}/api/status", timeout=10).json()["thresholds"][source]


# --- reading -----------------------------------------------------------------------------------------

def test_the_whatif_figures_equal_monitor_replay_on_the_same_journal(served, tiny_bundle):
    answer = whatif(served, quantile="0.5").json()
    assert figures(answer) == expected(served, tiny_bundle, {"quantile": 0.5, "fixed": None})
    # A low quantile turns normal verdicts into alerts: the comparison is not of two empty tables.
    assert answer["to_anomaly"] > 0 and answer["flips"] == answer["to_anomaly"] + answer["to_normal"]
    assert answer["recorded"]["labelled"] == 6 and answer["recorded"]["tp"] == 2
    assert set(answer["sources"]) == {"line1", "line2"}
    assert answer["changed_total"] == answer["flips"] == len(answer["changed"])
    flipped = answer["changed"][0]
    assert flipped["url"] == f"/verdicts/{flipped['id']}" and flipped["anomaly"] is True
    verdict = requests.get(f"{served.url}{flipped['url'].replace('/verdicts/', '/api/verdicts/')}", timeout=10)
    assert verdict.json()["record"]["anomaly"] is False  # it flips: the daemon called it normal


def test_one_source_and_a_time_range_are_replayed_as_monitor_replay_does(served, tiny_bundle):
    records = [r for r in journal_records(served.daemon) if "score" in r and r["source"] == "line2"]
    since, until = records[2]["time"], records[-2]["time"]
    answer = whatif(served, source="line2", fixed="0.0001", since=str(since), until=str(until)).json()
    assert set(answer["sources"]) == {"line2"}
    assert figures(answer) == expected(served, tiny_bundle, {"fixed": 0.0001, "quantile": None}, source="line2",
                                       since=since, until=until)
    assert answer["what_if"]["verdicts"] == len(records) - 4  # since <= time < until: not the first or last two


def test_the_configs_own_settings_reproduce_the_daemons_decisions(served):
    # The what-if's window starts from the calibration the daemon loaded: with no change, nothing flips.
    answer = whatif(served).json()
    assert answer["flips"] == 0 and answer["changed"] == []
    assert answer["recorded"] == answer["what_if"] and answer["recorded"]["verdicts"] >= 16


@pytest.mark.parametrize("params", [{"quantile": "1.5"}, {"window": "5"}, {"margin": "abc"}, {"fixed": "-1"},
                                    {"fixed": "0.2", "quantile": "0.9"}, {"fixed": "inf"}, {"source": "nope"},
                                    {"since": "yesterday"}, {"learn_from_anomalies": "maybe"}])
def test_a_bad_whatif_parameter_is_400_naming_it(served, params):
    response = whatif(served, **params)
    assert response.status_code == 400
    assert any(key in response.json()["error"] for key in params), response.json()


def test_the_panel_shows_the_figures_and_links_the_verdicts_that_flip(served):
    page = requests.get(f"{served.url}/whatif", params={"quantile": "0.5", "run": "1"}, timeout=30)
    assert page.status_code == 200 and 'id="whatif-figures"' in page.text
    flipped = whatif(served, quantile="0.5").json()["changed"]
    assert f'href="/verdicts/{flipped[0]["id"]}"' in page.text
    assert 'id="apply-form"' in page.text and 'name="quantile" value="0.5"' in page.text
    empty = requests.get(f"{served.url}/whatif", timeout=10)
    assert empty.status_code == 200 and 'id="whatif-figures"' not in empty.text and 'href="/whatif"' in empty.text


def test_a_replay_runs_off_the_event_loop(served):
    # A replay held up inside the thread pool: the same server still answers its health check (and scrapes).
    entered, release = threading.Event(), threading.Event()

    class Slow(DaemonController):
        def calibrations(self):
            entered.set()
            release.wait(20)
            return super().calibrations()

    server = HttpServer("127.0.0.1", 0, Slow(served.daemon))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    answers: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answers.append(requests.get(f"{base}/api/whatif", timeout=30)))
    try:
        slow.start()
        assert entered.wait(20)
        assert requests.get(f"{base}/-/healthy", timeout=3).status_code == 200
        assert not answers  # the replay is still held
    finally:
        release.set()
        slow.join(30)
        server.stop()
        server.join(5)
    assert answers[0].status_code == 200


# --- applying ----------------------------------------------------------------------------------------

def post_threshold(served: Served, body, url: str | None = None, **kw) -> requests.Response:
    return requests.post(f"{url or served.url}/api/threshold", json=body, timeout=60, **kw)


def test_apply_writes_the_config_journals_the_change_and_reloads_the_daemon(served):
    before = len(threshold_events(served))
    response = post_threshold(served, {"fixed": 0.123})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["written"] is True and answer["reload"]["ok"] is True and answer["journal"] == "written"
    text = config_path(served).read_text()
    assert "this comment must survive" in text and "a short window" in text
    config = load_config(config_path(served))  # validates
    assert (config.threshold.fixed, config.threshold.quantile, config.threshold.window) == (0.123, None, 500)
    events = threshold_events(served)[before:]
    assert len(events) == 1
    assert events[0]["by"] == "local" and events[0]["old"]["fixed"] is None and events[0]["new"]["fixed"] == 0.123
    # The running daemon judges with it now.
    now = status_threshold(served)
    assert (now["mode"], now["value"]) == ("fixed", 0.123)

    # null removes a key: back to the bundle's rolling quantile.
    back = post_threshold(served, {"fixed": None})
    assert back.status_code == 200 and back.json()["reload"]["ok"] is True
    assert load_config(config_path(served)).threshold.fixed is None
    assert "fixed" not in config_path(served).read_text()
    assert status_threshold(served)["mode"] == "rolling"
    assert [e["new"]["fixed"] for e in threshold_events(served)[before:]] == [0.123, None]


def test_applying_the_setting_in_force_writes_nothing(served):
    before, text = len(threshold_events(served)), config_path(served).read_text()
    response = post_threshold(served, {"window": 500})
    assert response.status_code == 200 and response.json()["written"] is False
    assert config_path(served).read_text() == text and len(threshold_events(served)) == before


@pytest.mark.parametrize("body", [{"quantile": 1.5}, {"window": 3}, {"window": 10.5}, {"fixed": -1}, {"margin": 0},
                                  {"fixed": 0.2, "quantile": 0.9}, {"margin": "abc"}, {"colour": 1}, {},
                                  {"learn_from_anomalies": "maybe"}, {"fixed": True}, [0.5], "0.9"])
def test_an_invalid_setting_is_400_and_nothing_is_written(served, body):
    before, text = len(threshold_events(served)), config_path(served).read_text()
    response = post_threshold(served, body)
    assert response.status_code == 400, response.text
    assert config_path(served).read_text() == text and len(threshold_events(served)) == before


def test_the_threshold_api_takes_only_json_and_no_foreign_origin(served):
    text = config_path(served).read_text()
    plain = requests.post(f"{served.url}/api/threshold", data='{"window": 700}',
                          headers={"Content-Type": "text/plain"}, timeout=10)
    assert plain.status_code == 415
    assert post_threshold(served, {"window": 700}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert config_path(served).read_text() == text


def test_a_cross_origin_form_post_is_refused_and_a_same_origin_one_applies(served):
    text, before = config_path(served).read_text(), len(threshold_events(served))
    url = f"{served.url}/whatif/apply"
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}, {},
                    {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{served.server.port + 1}"}):
        response = requests.post(url, data={"window": "800"}, headers=headers, timeout=10, allow_redirects=False)
        assert response.status_code == 403, headers
    assert config_path(served).read_text() == text and len(threshold_events(served)) == before

    bad = requests.post(url, data={"quantile": "2"}, headers={"Origin": served.url}, timeout=10,
                        allow_redirects=False)
    assert bad.status_code == 400 and "quantile" in bad.text and config_path(served).read_text() == text

    response = requests.post(url, data={"window": "800", "margin": ""}, headers={"Origin": served.url},
                             timeout=60, allow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/whatif?applied=1"
    assert load_config(config_path(served)).threshold.window == 800
    assert status_threshold(served)["window"] == 800  # reloaded
    page = requests.get(f"{served.url}{response.headers['location']}", timeout=10).text
    assert 'id="applied"' in page and "window 500 -&gt; 800" in page and "Reload: done" in page
    assert post_threshold(served, {"window": 500}).status_code == 200  # as the other tests expect it


def test_apply_beyond_loopback_needs_the_token_and_records_who_gave_it(served, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with_token = HttpServer("0.0.0.0", 0, DaemonController(served.daemon), token_file=token_file)
    without = HttpServer("0.0.0.0", 0, DaemonController(served.daemon))
    with_token.start()
    without.start()
    text, before = config_path(served).read_text(), len(threshold_events(served))
    try:
        a, b = (f"http://127.0.0.1:{s.port}" for s in (with_token, without))
        assert post_threshold(served, {"window": 600}, url=a).status_code == 401
        assert post_threshold(served, {"window": 600}, url=a, headers={"Authorization": "Bearer no"}).status_code == 401
        assert post_threshold(served, {"window": 600}, url=b).status_code == 403
        assert config_path(served).read_text() == text and len(threshold_events(served)) == before
        good = post_threshold(served, {"window": 600}, url=a, headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200 and good.json()["by"] == "token"
        assert threshold_events(served)[-1]["by"] == "token"
    finally:
        post_threshold(served, {"window": 500})
        for s in (with_token, without):
            s.stop()
            s.join(5)

