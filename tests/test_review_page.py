"""The review page in a real browser: Debian's chromium, headless, driven by selenium through /usr/bin/chromedriver.

Nothing is downloaded: the driver's path is given, so selenium's driver manager never runs. Without chromium or
chromedriver (Debian packages `chromium` and `chromium-driver`) the tests skip and say so. Every test run takes
the screenshots; they replace the README's in docs/screenshots/ only with UPDATE_SCREENSHOTS=1, so that a test run
leaves the checkout as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import wait_until
from test_review_api import Served, label_lines, monkeypatch_module, serve  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(240)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: install the Debian package {package}"
    return None


pytestmark = [pytestmark, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle, monkeypatch_module) -> Iterator[Served]:  # noqa: F811
    yield from serve(tmp_path_factory, tiny_bundle)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    # An explicit driver path: selenium's manager would otherwise try to fetch one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> None:
    """Take a screenshot (a real PNG, every run); write it over the README's only when asked to."""
    png = driver.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG"), "chromium returned no screenshot"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / name).write_bytes(png)


def image_loaded(driver, element) -> bool:
    return bool(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element))


def cards(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, "#gallery .card")]


def test_the_gallery_shows_the_evidence_of_a_file_just_flagged(served, browser):
    from selenium.webdriver.common.by import By

    served.drop("line2", anomalous=False)
    record = served.drop("line1", anomalous=True)
    browser.get(f"{served.url}/anomalies")
    card = browser.find_element(By.CSS_SELECTOR, f'#gallery .card[data-id="{record["id"]}"]')
    image = card.find_element(By.TAG_NAME, "img")
    assert image.get_attribute("src").endswith(f"/evidence/{record['id']}")
    wait_until(lambda: image_loaded(browser, image), 10)
    assert "line1" in card.text and f"{record['score']:.6g}" in card.text


def test_a_click_on_false_alarm_lands_in_the_journal_as_a_label_line(served, browser):
    from selenium.webdriver.common.by import By

    record = served.drop("line1", anomalous=True)
    browser.get(f"{served.url}/anomalies")
    browser.find_element(By.CSS_SELECTOR, f'#gallery .card[data-id="{record["id"]}"] a').click()
    wait_until(lambda: browser.current_url.endswith(f"/verdicts/{record['id']}"), 10)
    evidence = browser.find_element(By.ID, "evidence")
    wait_until(lambda: image_loaded(browser, evidence), 10)
    original = browser.find_element(By.ID, "original")  # the kept input, at full size, beside the evidence
    wait_until(lambda: image_loaded(browser, original), 10)
    assert record["id"] in browser.find_element(By.ID, "record").text
    assert browser.find_elements(By.ID, "label-missed_defect") == []  # an anomaly: defect or false alarm
    browser.find_element(By.NAME, "note").send_keys("reflection on the housing")
    screenshot(browser, "verdict.png")
    browser.find_element(By.ID, "label-false_alarm").click()
    wait_until(lambda: browser.find_elements(By.ID, "saved"), 10)
    lines = label_lines(served.daemon, record["id"])
    assert [(r["label"], r["note"], r["by"]) for r in lines] == [("false_alarm", "reflection on the housing",
                                                                  "local")]
    assert "false alarm" in browser.find_element(By.ID, "current").text


def test_a_normal_verdict_offers_only_missed_defect(served, browser):
    from selenium.webdriver.common.by import By

    record = served.drop("line2", anomalous=False)
    browser.get(f"{served.url}/verdicts/{record['id']}")
    buttons = [b.get_attribute("value") for b in browser.find_elements(By.CSS_SELECTOR, "#label-form button")]
    assert buttons == ["missed_defect"]
    browser.find_element(By.ID, "label-missed_defect").click()
    wait_until(lambda: browser.find_elements(By.ID, "saved"), 10)
    assert [r["label"] for r in label_lines(served.daemon, record["id"])] == ["missed_defect"]


def test_filters_and_paging_in_the_gallery(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for _ in range(3):
        served.drop("line2", anomalous=True)
    labelled = served.drop("line2", anomalous=True)
    browser.get(f"{served.url}/verdicts/{labelled['id']}")
    browser.find_element(By.ID, "label-defect").click()
    wait_until(lambda: browser.find_elements(By.ID, "saved"), 10)

    browser.get(f"{served.url}/anomalies")
    Select(browser.find_element(By.NAME, "source")).select_by_value("line2")  # the script submits on change
    wait_until(lambda: "source=line2" in browser.current_url, 10)
    line2 = cards(browser)
    assert len(line2) >= 4
    assert all("line2" in c.text for c in browser.find_elements(By.CSS_SELECTOR, "#gallery .card"))
    Select(browser.find_element(By.NAME, "label")).select_by_value("defect")
    wait_until(lambda: "label=defect" in browser.current_url, 10)
    assert cards(browser) == [labelled["id"]]
    assert "min_score" not in browser.current_url  # empty fields stay out of the URL

    # Score range: only the anomalies inside it.
    browser.get(f"{served.url}/anomalies?source=line2&min_score={labelled['score']}&max_score={labelled['score']}")
    assert cards(browser) == [labelled["id"]]

    # Paging by two, newest first, through every line2 anomaly without a repeat.
    browser.get(f"{served.url}/anomalies?source=line2&limit=2")
    seen = cards(browser)
    while browser.find_elements(By.ID, "older"):
        browser.find_element(By.ID, "older").click()
        wait_until(lambda: "before=" in browser.current_url, 10)
        page = cards(browser)
        assert 1 <= len(page) <= 2
        seen += page
    assert seen == line2
    assert browser.find_elements(By.ID, "newest")
    browser.get(f"{served.url}/anomalies")
    screenshot(browser, "anomalies.png")


def test_the_overview_lists_the_sources(served, browser):
    from selenium.webdriver.common.by import By

    served.drop("line1", anomalous=True)
    browser.get(f"{served.url}/")
    rows = {r.get_attribute("data-source"): r.text for r in browser.find_elements(By.CSS_SELECTOR, "#sources tbody tr")}
    assert set(rows) == {"line1", "line2"}
    assert "running" in rows["line1"]
    screenshot(browser, "overview.png")


def test_the_whatif_panel_answers_a_setting_with_its_figures_and_the_verdicts_that_flip(served, browser):
    from selenium.webdriver.common.by import By

    for _ in range(4):
        served.drop("line1", anomalous=False)
    served.drop("line1", anomalous=True)
    browser.get(f"{served.url}/")
    browser.find_element(By.ID, "nav-whatif").click()
    wait_until(lambda: browser.current_url.endswith("/whatif"), 10)
    assert browser.find_elements(By.ID, "whatif-figures") == []  # nothing replayed until asked
    browser.find_element(By.NAME, "quantile").send_keys("0.5")  # low: normal verdicts would be alerts
    browser.find_element(By.ID, "whatif-run").click()
    table = wait_until(lambda: browser.find_elements(By.ID, "whatif-figures"), 30)[0]
    rows = {(r.get_attribute("data-source"), r.get_attribute("data-row"))
            for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert {("line1", "recorded"), ("line1", "what-if"), ("all", "what-if")} <= rows
    assert "quantile=0.5" in browser.current_url
    flips = browser.find_elements(By.CSS_SELECTOR, "#whatif-flips tbody tr[data-id] a")
    assert flips, "a quantile of 0.5 flips some normal verdicts"
    # Without a config file there is nothing to write: the panel says so instead of offering to.
    assert not browser.find_element(By.ID, "apply-threshold").is_enabled()
    screenshot(browser, "whatif.png")
    flips[0].click()
    wait_until(lambda: "/verdicts/" in browser.current_url, 10)
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Normal")
