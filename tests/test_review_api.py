"""The review API against a real in-process daemon: anomalies, verdicts, evidence by id only, labels (validation,
latest wins, never duplicated), tokens, and refusal of cross-site label posts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import inprocess
import numpy as np
import pytest
import requests
from imagegen import anomalous_image, encode, normal_image
from netutil import wait_until

from monitor import metrics
from monitor.daemon import Daemon
from monitor.http.control import DaemonController
from monitor.http.server import HttpServer
from monitor.model.bundle import load_bundle

pytestmark = pytest.mark.timeout(180)

TOKEN = "review-token-for-tests"


def journal_records(daemon: Daemon) -> list[dict]:
    path = daemon.config.output.journal
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verdict_of(daemon: Daemon, name: str) -> dict | None:
    """The journal's verdict of file `name`, once there is one."""
    return next((r for r in journal_records(daemon) if "score" in r and r.get("path")
                 and Path(r["path"]).name == name), None)


def label_lines(daemon: Daemon, vid: str) -> list[dict]:
    return [r for r in journal_records(daemon) if r.get("verdict") == vid and "label" in r]


class Served(inprocess.Served):
    """A started daemon and a review server on a free loopback port."""

    def __init__(self, daemon: Daemon, server: HttpServer) -> None:
        super().__init__(daemon, server)
        self._n = 0

    def drop(self, source: str, anomalous: bool, seed: int | None = None) -> dict:
        """Write an image into `source`'s folder and return its verdict's journal record once it is there."""
        self._n += 1
        rng = np.random.default_rng(1000 + self._n if seed is None else seed)
        image = anomalous_image(rng, 32) if anomalous else normal_image(rng, 32)
        name = f"{'bad' if anomalous else 'ok'}-{self._n}.png"
        (self.daemon.config.source(source).folder / name).write_bytes(encode(image))
        record = wait_until(lambda: verdict_of(self.daemon, name), 30)
        assert record["anomaly"] is anomalous, record
        return record


def serve(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Iterator[Served]:
    yield from inprocess.serve(inprocess.make_daemon(tmp_path_factory.mktemp("review-daemon"), bundle), Served)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle, monkeypatch_module) -> Iterator[Served]:
    yield from serve(tmp_path_factory, tiny_bundle)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    # No token from the environment: loopback is then open, as the tests of the open case expect.
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MONITOR_API_TOKEN", raising=False)
        yield mp


def other_server(served: Served, host: str, token: str | None, tmp_path: Path, **kw) -> HttpServer:
    token_file = None
    if token is not None:
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
    server = HttpServer(host, 0, DaemonController(served.daemon), token_file=token_file, **kw)
    server.start()
    return server


# --- reading -------------------------------------------------------------------------------------

def test_a_flagged_file_is_listed_with_its_evidence_url_and_the_evidence_is_its_png(served):
    record = served.drop("line1", anomalous=True)
    answer = requests.get(f"{served.url}/api/anomalies", params={"source": "line1"}, timeout=10).json()
    item = next(i for i in answer["items"] if i["id"] == record["id"])
    assert item["record"] == record
    assert item["evidence_url"] == f"/evidence/{record['id']}"
    image = requests.get(served.url + item["evidence_url"], timeout=10)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == Path(record["evidence"]).read_bytes()


def test_a_verdict_is_answered_by_id_and_an_unknown_id_is_404(served):
    record = served.drop("line2", anomalous=False)
    answer = requests.get(f"{served.url}/api/verdicts/{record['id']}", timeout=10).json()
    assert answer["record"] == record and answer["evidence_url"] is None and answer["label"] is None
    assert requests.get(f"{served.url}/api/verdicts/{'0' * 32}", timeout=10).status_code == 404
    assert requests.get(f"{served.url}/api/verdicts/not-an-id", timeout=10).status_code == 404


@pytest.mark.parametrize("params", [{"label": "maybe"}, {"since": "yesterday"}, {"min_score": "nan"},
                                    {"limit": "0"}, {"limit": "100000"}, {"before": "../etc"}])
def test_bad_filters_are_400_naming_the_parameter(served, params):
    response = requests.get(f"{served.url}/api/anomalies", params=params, timeout=10)
    assert response.status_code == 400
    assert next(iter(params)) in response.json()["error"]


@pytest.mark.parametrize("path", ["/evidence/..%2F..%2F..%2Fetc%2Fpasswd", "/evidence/../../etc/passwd",
                                  "/evidence/%2Fetc%2Fpasswd", "/evidence/" + "0" * 32, "/evidence/ABCDEF"])
def test_evidence_is_served_only_by_a_known_verdict_id(served, path):
    response = requests.get(served.url + path, timeout=10)
    assert response.status_code == 404
    assert b"root:" not in response.content


@pytest.mark.parametrize(("key", "folder", "route", "ids"), [("evidence", "evidence", "evidence", "ef"),
                                                            ("original", "originals", "originals", "cd")])
def test_a_file_a_journal_line_places_outside_its_output_folder_is_not_served(served, tmp_path, key, folder, route,
                                                                              ids):
    # A hand-edited journal line: a valid id whose evidence or original is another file. The server reads only
    # inside the output folder of that kind.
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for the page")
    inside = getattr(served.daemon.config.output, folder)
    # Ids of their own per case: the served daemon and its journal are shared by the module.
    record = dict(served.drop("line1", anomalous=True), id=ids[0] * 32, **{key: str(secret)})
    sneaky = dict(record, id=ids[1] * 32, **{key: str(inside / ".." / secret.name)})
    served.daemon.journal.append(record)
    served.daemon.journal.append(sneaky)
    for vid in (ids[0] * 32, ids[1] * 32):
        assert requests.get(f"{served.url}/api/verdicts/{vid}", timeout=10).status_code == 200
        assert requests.get(f"{served.url}/{route}/{vid}", timeout=10).status_code == 404


def test_a_flagged_file_is_kept_whole_and_served_by_its_verdict_id(served):
    record = served.drop("line1", anomalous=True)
    sent = (served.daemon.config.source("line1").folder / Path(record["path"]).name).read_bytes()
    kept = Path(record["original"])
    assert kept.name == f"{record['id']}.png" and kept.parent.parent.name == "line1"
    assert kept.is_relative_to(served.daemon.config.output.originals)
    item = requests.get(f"{served.url}/api/verdicts/{record['id']}", timeout=10).json()
    assert item["original_url"] == f"/originals/{record['id']}"
    response = requests.get(served.url + item["original_url"], timeout=10)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == sent  # byte for byte what was scored, not a re-encoding


def test_a_normal_verdict_keeps_no_original_by_default(served):
    record = served.drop("line2", anomalous=False)
    assert "original" not in record
    assert requests.get(f"{served.url}/originals/{record['id']}", timeout=10).status_code == 404


# --- labelling -----------------------------------------------------------------------------------

def post_label(served: Served, vid: str, body: dict, **kw) -> requests.Response:
    return requests.post(f"{served.url}/api/verdicts/{vid}/label", json=body, timeout=10, **kw)


def test_a_label_is_one_journal_line_and_the_latest_wins(served):
    record = served.drop("line1", anomalous=True)
    vid = record["id"]
    first = post_label(served, vid, {"label": "defect", "note": "crack"})
    assert first.status_code == 200
    lines = label_lines(served.daemon, vid)
    assert len(lines) == 1  # fsynced before the answer: in the file when the client reads it
    assert set(lines[0]) == {"time", "label", "verdict", "note", "by"}
    assert lines[0] | {"time": 0} == {"time": 0, "label": "defect", "verdict": vid, "note": "crack", "by": "local"}
    assert post_label(served, vid, {"label": "false_alarm", "note": "glare"}).status_code == 200
    answer = requests.get(f"{served.url}/api/verdicts/{vid}", timeout=10).json()
    assert answer["label"]["label"] == "false_alarm" and answer["label"]["count"] == 2
    assert [r["label"] for r in label_lines(served.daemon, vid)] == ["defect", "false_alarm"]
    listed = requests.get(f"{served.url}/api/anomalies", params={"label": "false_alarm"}, timeout=10).json()
    assert vid in [i["id"] for i in listed["items"]]
    listed = requests.get(f"{served.url}/api/anomalies", params={"label": "defect"}, timeout=10).json()
    assert vid not in [i["id"] for i in listed["items"]]


def test_labels_are_counted_and_precision_follows_the_latest_label(served):
    base = metrics.REGISTRY.get_sample_value("anomaly_monitor_labels_total",
                                             {"source": "line2", "label": "defect"}) or 0.0
    a, b = served.drop("line2", anomalous=True), served.drop("line2", anomalous=True)
    assert post_label(served, a["id"], {"label": "defect"}).status_code == 200
    assert post_label(served, b["id"], {"label": "false_alarm"}).status_code == 200
    text = requests.get(f"{served.url}/metrics", timeout=10).text
    assert metrics.REGISTRY.get_sample_value("anomaly_monitor_labels_total",
                                             {"source": "line2", "label": "defect"}) == base + 1
    assert 'anomaly_monitor_labelled_precision{source="line2"}' in text
    precision = metrics.REGISTRY.get_sample_value("anomaly_monitor_labelled_precision", {"source": "line2"})
    assert post_label(served, b["id"], {"label": "defect"}).status_code == 200
    assert metrics.REGISTRY.get_sample_value("anomaly_monitor_labelled_precision", {"source": "line2"}) > precision


def test_a_missed_defect_is_only_for_a_normal_verdict_and_defect_only_for_an_anomaly(served):
    normal = served.drop("line2", anomalous=False)
    anomaly = served.drop("line2", anomalous=True)
    assert post_label(served, anomaly["id"], {"label": "missed_defect"}).status_code == 400
    assert post_label(served, normal["id"], {"label": "defect"}).status_code == 400
    assert post_label(served, normal["id"], {"label": "false_alarm"}).status_code == 400
    assert post_label(served, normal["id"], {"label": "missed_defect", "note": "hairline"}).status_code == 200
    listed = requests.get(f"{served.url}/api/anomalies", params={"label": "missed_defect"}, timeout=10).json()
    assert normal["id"] in [i["id"] for i in listed["items"]]
    assert label_lines(served.daemon, anomaly["id"]) == []


@pytest.mark.parametrize(("body", "status"), [({"label": "nonsense"}, 400), ({"note": "no label"}, 400),
                                              ({"label": "defect", "note": 5}, 400), ([1, 2], 400)])
def test_a_bad_label_body_is_400_and_writes_nothing(served, body, status):
    record = served.drop("line1", anomalous=True)
    assert post_label(served, record["id"], body).status_code == status
    assert label_lines(served.daemon, record["id"]) == []


def test_a_label_of_an_unknown_verdict_is_404(served):
    assert post_label(served, "1" * 32, {"label": "defect"}).status_code == 404
    assert post_label(served, "nope", {"label": "defect"}).status_code == 404


def test_the_json_api_takes_only_json_and_no_foreign_origin(served):
    record = served.drop("line1", anomalous=True)
    url = f"{served.url}/api/verdicts/{record['id']}/label"
    # What a foreign page can send without a CORS preflight: a "simple" content type.
    plain = requests.post(url, data='{"label": "defect"}', headers={"Content-Type": "text/plain"}, timeout=10)
    assert plain.status_code == 415
    foreign = post_label(served, record["id"], {"label": "defect"}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert label_lines(served.daemon, record["id"]) == []


def test_a_cross_origin_form_post_is_refused_and_a_same_origin_one_is_journaled(served):
    record = served.drop("line1", anomalous=True)
    url = f"{served.url}/verdicts/{record['id']}/label"
    form = {"label": "false_alarm", "note": "csrf"}
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}, {},
                    {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{served.server.port + 1}"}):
        response = requests.post(url, data=form, headers=headers, timeout=10, allow_redirects=False)
        assert response.status_code == 403, headers
    assert label_lines(served.daemon, record["id"]) == []
    response = requests.post(url, data=form, headers={"Origin": served.url}, timeout=10, allow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/verdicts/{record['id']}?saved=1"
    assert [r["note"] for r in label_lines(served.daemon, record["id"])] == ["csrf"]


def test_a_label_from_a_new_index_is_the_one_journaled_before(served):
    # The index is rebuilt from the journal by a second server: labels are journal lines, nothing else.
    record = served.drop("line1", anomalous=True)
    assert post_label(served, record["id"], {"label": "false_alarm", "note": "restart"}).status_code == 200
    server = HttpServer("127.0.0.1", 0, DaemonController(served.daemon))
    server.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{server.port}/api/verdicts/{record['id']}", timeout=10).json()
        assert (answer["label"]["label"], answer["label"]["note"]) == ("false_alarm", "restart")
    finally:
        server.stop()
        server.join(5)


# --- tokens --------------------------------------------------------------------------------------

def test_labels_beyond_loopback_need_the_token_and_record_who_gave_it(served, tmp_path):
    record = served.drop("line2", anomalous=True)
    server = other_server(served, "0.0.0.0", TOKEN, tmp_path)
    url = f"http://127.0.0.1:{server.port}/api/verdicts/{record['id']}/label"
    try:
        assert requests.post(url, json={"label": "defect"}, timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert requests.post(url, json={"label": "defect"}, headers=wrong, timeout=10).status_code == 401
        assert label_lines(served.daemon, record["id"]) == []
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.post(url, json={"label": "defect"}, headers=good, timeout=10).status_code == 200
        assert [r["by"] for r in label_lines(served.daemon, record["id"])] == ["token"]
        # Reading stays open unless the server is told otherwise.
        assert requests.get(f"http://127.0.0.1:{server.port}/api/anomalies", timeout=10).status_code == 200
    finally:
        server.stop()
        server.join(5)


def test_labels_beyond_loopback_without_a_token_are_refused(served, tmp_path):
    record = served.drop("line2", anomalous=True)
    server = other_server(served, "0.0.0.0", None, tmp_path)
    try:
        url = f"http://127.0.0.1:{server.port}/api/verdicts/{record['id']}/label"
        assert requests.post(url, json={"label": "defect"}, timeout=10).status_code == 403
    finally:
        server.stop()
        server.join(5)


def test_reading_needs_the_token_when_required_and_the_login_cookie_carries_it(served, tmp_path):
    record = served.drop("line1", anomalous=True)
    server = other_server(served, "127.0.0.1", TOKEN, tmp_path, read_token_required=True)
    base = f"http://127.0.0.1:{server.port}"
    try:
        for path in ("/api/anomalies", f"/api/verdicts/{record['id']}", f"/evidence/{record['id']}"):
            assert requests.get(base + path, timeout=10).status_code == 401, path
            good = {"Authorization": f"Bearer {TOKEN}"}
            assert requests.get(base + path, headers=good, timeout=10).status_code == 200, path
        page = requests.get(f"{base}/anomalies", timeout=10, allow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 200  # Prometheus scrapes without it
        session = requests.Session()
        wrong = session.post(f"{base}/login?next=/anomalies", data={"token": "nope"}, headers={"Origin": base},
                             timeout=10, allow_redirects=False)
        assert wrong.status_code == 401
        login = session.post(f"{base}/login?next=/anomalies", data={"token": TOKEN}, headers={"Origin": base},
                             timeout=10, allow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/anomalies"
        assert TOKEN not in login.headers["set-cookie"]
        assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=strict" in login.headers["set-cookie"]
        assert session.get(f"{base}/anomalies", timeout=10).status_code == 200
        assert session.get(f"{base}/evidence/{record['id']}", timeout=10).status_code == 200
        # The cookie labels from the page's form too (same origin only).
        form = session.post(f"{base}/verdicts/{record['id']}/label", data={"label": "defect"},
                            headers={"Origin": base}, timeout=10, allow_redirects=False)
        assert form.status_code == 303
        assert [r["by"] for r in label_lines(served.daemon, record["id"])] == ["token"]
    finally:
        server.stop()
        server.join(5)


def test_the_login_form_sends_only_to_a_path_of_this_server(served, tmp_path):
    server = other_server(served, "127.0.0.1", TOKEN, tmp_path, read_token_required=True)
    base = f"http://127.0.0.1:{server.port}"
    try:
        for target in ("//evil.example/", "https://evil.example/"):
            login = requests.post(f"{base}/login", params={"next": target}, data={"token": TOKEN},
                                  headers={"Origin": base}, timeout=10, allow_redirects=False)
            assert login.status_code == 303 and login.headers["location"] == "/"
    finally:
        server.stop()
        server.join(5)


# --- pages ---------------------------------------------------------------------------------------

def test_the_overview_shows_each_source_with_its_threshold_and_the_calibrated_one(served, tiny_bundle):
    served.drop("line1", anomalous=True)
    status = requests.get(f"{served.url}/api/status", timeout=10).json()
    calibrated = status["thresholds"]["line1"]["calibrated"]
    assert calibrated == pytest.approx(load_bundle(tiny_bundle).default_threshold)
    page = requests.get(f"{served.url}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'data-source="line1"' in page.text and 'data-source="line2"' in page.text
    assert f"{calibrated:.6g}" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_the_static_files_are_served_from_the_package(served):
    css = requests.get(f"{served.url}/static/review.css", timeout=10)
    assert css.status_code == 200 and ".gallery" in css.text
    assert requests.get(f"{served.url}/static/../app.py", timeout=10).status_code == 404


# --- the journal cache of the what-if and compare pages ------------------------------------------------------

def test_the_journal_is_read_once_until_a_line_is_appended_or_it_rotates(tmp_path):
    from monitor.http.review import JournalCache
    from monitor.replay import read_records

    journal = tmp_path / "journal.jsonl"
    line = json.dumps({"id": "a" * 32, "time": 1.0, "frame_time": 1.0, "source": "s", "score": 0.1,
                       "threshold": 0.2, "anomaly": False}) + "\n"
    journal.write_text(line)
    reads: list[int] = []

    def read(path):  # noqa: ANN001, ANN202 - the real reader, counted
        records = read_records(path)
        reads.append(len(records.verdicts))
        return records

    cache = JournalCache(read)
    first = cache.get(journal)
    assert cache.get(journal) is first and reads == [1]
    with journal.open("a") as f:
        f.write(line.replace("a" * 32, "b" * 32))
    assert len(cache.get(journal).verdicts) == 2 and reads == [1, 2]
    journal.rename(tmp_path / "journal.jsonl.1")  # a rotation: the same lines under another name
    journal.write_text("")
    assert len(cache.get(journal).verdicts) == 2 and reads == [1, 2, 2]
