"""Shadow models: a candidate bundle scores the same frames as a source's own model, its verdicts go to the
journal marked `shadow` (naming their primary), and it never alerts. One real daemon subprocess for the module,
with two models, a real webhook receiver as its alert sink and its real HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from alert_servers import WebhookServer
from daemon_proc import DaemonProcess, free_port, wait_until
from imagegen import anomalous_image, encode, normal_image
from reload_util import bundle_variant, metric, rewrite_config, scrape
from test_review_page import _missing as browser_missing
from test_review_page import browser, screenshot  # noqa: F401 - a fixture

from monitor.config import ConfigError, load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent


# --- config ----------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_shadow_names_a_model_of_models(tmp_path):
    config = load_config(write(tmp_path, "models: {default: m, candidate: n}\n"
                                         "sources: [{name: a, folder: in, shadow: candidate}, {name: c, camera: 0, "
                                         "shadow: candidate}, {name: b, folder: in2}]\n"))
    assert [s.shadow for s in config.sources] == ["candidate", "candidate", None]


def test_an_unknown_shadow_is_an_error_naming_the_file_the_key_and_the_known_models(tmp_path):
    path = write(tmp_path, "models: {default: m, candidate: n}\n"
                           "sources: [{name: a, folder: in}, {name: c, camera: 0, shadow: x}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: sources[1].shadow: unknown model 'x' (known: candidate, default)"


def test_a_shadow_equal_to_the_sources_own_model_is_an_error(tmp_path):
    path = write(tmp_path, "models: {default: m, candidate: n}\n"
                           "sources: [{name: a, folder: in, model: candidate, shadow: candidate}]\n")
    with pytest.raises(ConfigError, match=r"config.yaml: sources\[0\]\.shadow: 'candidate' is the source's own "
                                          r"model"):
        load_config(path)


# --- the daemon --------------------------------------------------------------------------------------------
@dataclass
class Shadowed:
    proc: DaemonProcess
    hook: WebhookServer
    port: int
    config: dict
    n: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop(self, folder: str, count: int, anomalous: bool = False) -> list[str]:
        """`count` images written into `folder`; their names."""
        names = []
        for _ in range(count):
            self.n += 1
            rng = np.random.default_rng(500 + self.n)
            image = anomalous_image(rng, 32) if anomalous else normal_image(rng, 32)
            name = f"{'bad' if anomalous else 'ok'}-{self.n}.png"
            tmp = self.proc.workdir / f".{name}"
            tmp.write_bytes(encode(image))
            tmp.replace(self.proc.workdir / folder / name)  # complete when it appears
            names.append(name)
        return names

    def lines_of(self, names: list[str], shadows: int) -> tuple[list[dict], list[dict]]:
        """(primary, shadow) verdict lines of the files `names`, once there are len(names) primaries and
        `shadows` shadow lines."""
        def found() -> tuple[list[dict], list[dict]] | None:
            mine = [v for v in self.proc.verdicts() if v.get("path") and Path(v["path"]).name in names]
            primary = [v for v in mine if not v.get("shadow")]
            shadow = [v for v in mine if v.get("shadow")]
            return (primary, shadow) if len(primary) == len(names) and len(shadow) == shadows else None

        return wait_until(found, 30)

    def reload(self, config: dict) -> dict:
        rewrite_config(self.proc.config_path, config)
        answer = requests.post(f"{self.url}/-/reload", timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()


def daemon_config(tiny_bundle: Path, candidate: Path, port: int, hook_url: str, shadow: str | None) -> dict:
    line1 = {"name": "line1", "folder": "in1", "settle_ms": 20}
    if shadow is not None:
        line1["shadow"] = shadow
    return {
        "models": {"default": str(tiny_bundle), "candidate": str(candidate)},
        "sources": [line1, {"name": "line2", "folder": "in2", "settle_ms": 20}],
        "batching": {"max_batch": 8, "max_wait_ms": 20},
        "metrics": {"host": "127.0.0.1", "port": port},
        "alerts": {"backoff_initial_s": 0.02, "backoff_max_s": 0.2,
                   "sinks": [{"type": "webhook", "name": "chat", "url": hook_url, "cooldown_s": 0,
                              "digest_after": 0}]},
    }


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory, tiny_bundle, subprocess_env) -> Iterator[Shadowed]:
    work = tmp_path_factory.mktemp("shadow")
    # The candidate's calibrated threshold a thousandth of the model's: it flags every image, which the
    # source's own model passes (normal images), so any alert of line1 could only come from the shadow.
    candidate = bundle_variant(tiny_bundle, work / "candidate", margin=0.001)
    port = free_port()
    with WebhookServer() as hook:
        config = daemon_config(tiny_bundle, candidate, port, hook.url, shadow="candidate")
        proc = DaemonProcess(work / "d", config, subprocess_env)
        for folder in ("in1", "in2"):
            (proc.workdir / folder).mkdir(parents=True, exist_ok=True)
        proc.start()
        try:
            yield Shadowed(proc, hook, port, config)
        finally:
            proc.kill()


def line1_alerts(hook: WebhookServer) -> list:
    return [r for r in hook.received() if "line1" in json.dumps(r)]


def test_every_frame_has_one_primary_and_one_shadow_verdict_and_the_shadow_never_alerts(shadowed):
    names = shadowed.drop("in1", 5)
    primary, shadow = shadowed.lines_of(names, shadows=5)
    by_id = {p["id"]: p for p in primary}
    assert all(not p["anomaly"] and "shadow" not in p and p["model"] == "default" for p in primary)
    assert sorted(s["shadow_of"] for s in shadow) == sorted(by_id)  # one shadow per primary, naming it
    for s in shadow:
        p = by_id[s["shadow_of"]]
        assert s["shadow"] is True and s["anomaly"] is True and s["evidence"] is None
        assert s["model"] == "candidate" and s["model_id"] != p["model_id"]
        assert s["path"] == p["path"] and s["frame_time"] == p["frame_time"] and s["source"] == "line1"
        assert s["threshold"] < p["threshold"] / 100  # judged by its own, the candidate's, threshold
        assert "file" not in s  # the ledger learns of a scored file from its primary verdict only
    # The sink works: line2's anomaly (no shadow) reaches the receiver; line1's shadow anomalies never do.
    (bad,) = shadowed.drop("in2", 1, anomalous=True)
    shadowed.lines_of([bad], shadows=0)
    wait_until(lambda: any(bad in json.dumps(r) for r in shadowed.hook.received()), 30)
    assert line1_alerts(shadowed.hook) == []

    def counted() -> str | None:
        # line2's anomaly is counted just after its alert is released: wait for it rather than race the scorer.
        text = scrape(shadowed.port)
        try:
            return text if metric(text, "anomaly_monitor_anomalies_total", source="line2") == 1 else None
        except KeyError:
            return None

    text = wait_until(counted, 10)
    assert metric(text, "anomaly_monitor_shadow_images_scored_total", source="line1", model="candidate",
                  outcome="anomaly") == 5
    assert metric(text, "anomaly_monitor_images_scored_total", source="line1", outcome="normal") == 5
    with pytest.raises(KeyError):  # the shadow's anomalies are not the line's
        metric(text, "anomaly_monitor_images_scored_total", source="line1", outcome="anomaly")
    assert metric(text, "anomaly_monitor_anomalies_total", source="line2") == 1


def test_the_review_page_lists_no_shadow_verdict_and_refuses_to_label_one(shadowed):
    names = shadowed.drop("in1", 1)
    (primary,), (shadow,) = shadowed.lines_of(names, shadows=1)
    listed = requests.get(f"{shadowed.url}/api/anomalies", params={"limit": 500}, timeout=10).json()
    # Every line1 shadow verdict is an anomaly, every line1 primary normal: the gallery shows none of line1.
    assert all(i["record"]["source"] == "line2" for i in listed["items"])
    assert requests.get(f"{shadowed.url}/api/verdicts/{shadow['id']}", timeout=10).status_code == 404
    refused = requests.post(f"{shadowed.url}/api/verdicts/{shadow['id']}/label", json={"label": "defect"},
                            timeout=10)
    assert refused.status_code == 400 and refused.json()["primary"] == primary["id"]
    assert not [r for r in shadowed.proc.records() if r.get("verdict") == shadow["id"]]
    ok = requests.post(f"{shadowed.url}/api/verdicts/{primary['id']}/label", json={"label": "missed_defect"},
                       timeout=10)
    assert ok.status_code == 200, ok.text


def test_compare_on_the_command_line_and_the_api_agree(shadowed):
    (primary, _), _ = shadowed.lines_of(shadowed.drop("in1", 2), shadows=2)
    labelled = requests.post(f"{shadowed.url}/api/verdicts/{primary['id']}/label", json={"label": "missed_defect"},
                             timeout=10)
    assert labelled.status_code == 200, labelled.text
    api = requests.get(f"{shadowed.url}/api/compare", timeout=30)
    assert api.status_code == 200
    answer = api.json()
    res = subprocess.run([sys.executable, "-m", "monitor", "compare", "--config", str(shadowed.proc.config_path),
                          "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    cli = json.loads(res.stdout)
    # The journal may have grown between the two reads only if something was dropped: nothing was.
    assert cli["pairings"] == answer["pairings"] and cli["unpaired"] == answer["unpaired"] == 0
    (pairing,) = answer["pairings"]
    assert (pairing["source"], pairing["model"], pairing["shadow_model"]) == ("line1", "default", "candidate")
    assert pairing["frames"] == pairing["shadow_only"] == pairing["shadow"]["alerts"] >= 2
    assert pairing["agree"] == pairing["primary"]["alerts"] == 0
    # The missed defects labelled (here, and by the review test when it ran first): found by the shadow alone.
    assert pairing["defects"] >= 1 and pairing["shadow"]["recall"] == 1.0 and pairing["primary"]["recall"] == 0.0
    assert pairing["shadow"]["precision"] == 1.0 and pairing["primary"]["precision"] is None
    page = requests.get(f"{shadowed.url}/compare", params={"source": "line1"}, timeout=30)
    assert page.status_code == 200 and 'data-role="shadow"' in page.text and "candidate" in page.text
    assert 'href="/compare"' in requests.get(f"{shadowed.url}/", timeout=10).text  # in the nav of every page


def test_a_reload_removes_and_adds_a_shadow_without_replacing_the_source(shadowed, tiny_bundle):
    candidate = shadowed.config["models"]["candidate"]
    without = daemon_config(tiny_bundle, Path(candidate), shadowed.port, shadowed.hook.url, shadow=None)
    message = shadowed.reload(without)["message"]
    assert "sources_replaced=none" in message
    status = requests.get(f"{shadowed.url}/api/status", timeout=10).json()
    assert {s["name"]: s["shadow"] for s in status["sources"]} == {"line1": None, "line2": None}
    names = shadowed.drop("in1", 2)
    shadowed.lines_of(names, shadows=0)
    shadowed.reload(shadowed.config)
    status = requests.get(f"{shadowed.url}/api/status", timeout=10).json()
    assert {s["name"]: s["shadow"] for s in status["sources"]}["line1"] == "candidate"
    names = shadowed.drop("in1", 2)
    primary, shadow = shadowed.lines_of(names, shadows=2)
    assert {s["shadow_of"] for s in shadow} == {p["id"] for p in primary}
    assert line1_alerts(shadowed.hook) == []


@pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
def test_the_shadow_page_in_a_browser_shows_both_models_of_a_source(shadowed, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    shadowed.lines_of(shadowed.drop("in1", 3), shadows=3)
    browser.get(f"{shadowed.url}/compare")
    rows = {(r.get_attribute("data-source"), r.get_attribute("data-role")): r.text
            for r in browser.find_elements(By.CSS_SELECTOR, "#compare tbody tr")}
    assert set(rows) == {("line1", "primary"), ("line1", "shadow")}
    assert "candidate" in rows[("line1", "shadow")] and "default" in rows[("line1", "primary")]
    screenshot(browser, "compare.png")
    browser.find_element(By.CSS_SELECTOR, 'select[name="source"] option[value="line2"]').click()
    browser.find_element(By.CSS_SELECTOR, "#compare-form button").click()
    wait_until(lambda: "source=line2" in browser.current_url, 10)
    assert "No shadow verdicts" in browser.find_element(By.ID, "compare").text


def test_promotion_is_a_config_change_and_a_reload(shadowed, tiny_bundle):
    # Last of the daemon's tests on purpose: once promoted, the candidate (which flags everything) alerts.
    candidate = shadowed.config["models"]["candidate"]
    promoted = daemon_config(tiny_bundle, Path(candidate), shadowed.port, shadowed.hook.url, shadow=None)
    promoted["sources"][0]["model"] = "candidate"
    assert "sources_replaced=none" in shadowed.reload(promoted)["message"]
    status = requests.get(f"{shadowed.url}/api/status", timeout=10).json()
    assert {s["name"]: (s["model"], s["shadow"]) for s in status["sources"]}["line1"] == ("candidate", None)
    names = shadowed.drop("in1", 2)
    primary, _ = shadowed.lines_of(names, shadows=0)
    assert {(v["model"], v["anomaly"]) for v in primary} == {("candidate", True)}
    wait_until(lambda: len(line1_alerts(shadowed.hook)) >= 2, 30)  # now it is the line's model: it alerts
    assert shadowed.proc.terminate() == 0


# --- a failing candidate -------------------------------------------------------------------------------------
class _BrokenScorer:
    """A candidate whose every call fails (a bundle that loads but cannot score these images)."""

    def call_groups(self, images: list) -> list[slice]:
        return [slice(0, len(images))]

    def score(self, images: list) -> None:
        raise RuntimeError("candidate cannot score")


def test_a_failing_shadow_scorer_costs_only_the_shadow_verdicts():
    from types import SimpleNamespace

    from monitor import metrics
    from monitor.daemon import Daemon
    from monitor.records import Frame, Verdict

    broken = SimpleNamespace(name="candidate", identity="cccccccccccc", scorer=_BrokenScorer())
    pipeline = SimpleNamespace(shadow_model_of=lambda source: broken if source == "line1" else None,
                               shadow_thresholds={})
    frames = [Frame(source, np.zeros((4, 4), np.uint8), 1.0) for source in ("line1", "line2", "line1")]
    verdicts = [(f, Verdict(source=f.source, frame_time=1.0, scored_at=2.0, score=0.1, threshold=0.2,
                            anomaly=False)) for f in frames]
    before = metrics.REGISTRY.get_sample_value("anomaly_monitor_errors_total", {"stage": "shadow"}) or 0
    assert Daemon._score_shadows(None, pipeline, verdicts) == []  # no exception reaches the primary's batch
    assert metrics.REGISTRY.get_sample_value("anomaly_monitor_errors_total", {"stage": "shadow"}) == before + 1
