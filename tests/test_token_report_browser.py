"""The review page's token warnings in headless Chromium: badges, the words a text encoder cuts, the token panel."""

from __future__ import annotations

import os


from library.dataset.tokens import TokenCounter
from library.review.report import ReportOptions, read_report_data, write_report
from tests.fixtures.datasets import make_image, write_sidecar
from tests.test_caption_report_browser import (SCREENSHOT_ENV, browser, card, click, open_page, pytestmark,  # noqa: F401
                                               shown, wait)

from selenium.webdriver.common.by import By  # noqa: E402  (skipped with the browser tests above when missing)
from selenium.webdriver.support.ui import Select  # noqa: E402

LONG = ", ".join(f"tag number {i}" for i in range(30))
DESCRIPTION = " ".join(["A very long description of a quiet harbour town at dawn."] * 50)  # > 512 tokens


def test_token_badges_cut_words_and_filters(browser, tmp_path):  # noqa: F811 - the imported fixture
    ds = tmp_path / "ds"
    write_sidecar(make_image(ds / "short.png", 32, 32), "1girl, solo")
    write_sidecar(make_image(ds / "long.png", 32, 32), LONG)
    write_sidecar(make_image(ds / "dual.png", 32, 32), "1girl, harbour\n" + DESCRIPTION)
    make_image(ds / "none.png", 32, 32)
    result = write_report(ds, tmp_path / "r.html", ReportOptions(workers=0, progress=False,
                                                                 tokens=TokenCounter.estimates()))
    data = read_report_data(result.path)
    rows = {r["p"]: r for r in data["images"]}
    assert [e["key"] for e in data["tokens"]] == ["clip", "t5"] and data["tokens"][0]["estimate"]
    assert "x" not in rows["short.png"] and "k" not in rows["none.png"]
    open_page(browser, result.path.as_uri())

    def badges(rel):
        return [b.text for b in card(browser, rel).find_elements(By.CSS_SELECTOR, ".badge.tok")]

    clip_long = rows["long.png"]["k"][0]
    assert badges("short.png") == [f"~{rows['short.png']['k'][0]}/75 CLIP"]
    assert badges("long.png") == [f"~{clip_long}/75 CLIP"] and clip_long > 75
    over = card(browser, "long.png").find_elements(By.CSS_SELECTOR, ".badge.tok-over")
    assert [b.text for b in over] == [f"~{clip_long}/75 CLIP"]
    assert len(badges("dual.png")) == 2 and badges("dual.png")[1].endswith("/512 T5")  # T5 shown once over
    cut = card(browser, "long.png").find_element(By.CSS_SELECTOR, ".caption .cut")
    assert cut.text == "CLIP cuts at 75: " + rows["long.png"]["x"]["clip"]
    assert LONG.endswith(cut.find_element(By.TAG_NAME, "s").text)
    assert not card(browser, "short.png").find_elements(By.CSS_SELECTOR, ".caption .cut")
    assert len(card(browser, "dual.png").find_elements(By.CSS_SELECTOR, ".caption .cut")) == 2
    panel = browser.find_element(By.ID, "tokens-section")
    assert "ESTIMATED" in panel.text and "2 cut by CLIP" in panel.text
    assert "CLIP over 150 (sd-scripts --max_token_length 150)" in panel.text
    assert "2 cut by CLIP at 75 tokens" in browser.find_element(By.ID, "stats").text

    Select(browser.find_element(By.ID, "filter-status")).select_by_value("cut:1")
    wait(browser, lambda: shown(browser) == ["dual.png"])
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("all")
    wait(browser, lambda: len(shown(browser)) == 4)
    click(browser, browser.find_element(By.CSS_SELECTOR, '#token-table tr[data-key="tok-clip-75"]'))
    wait(browser, lambda: sorted(shown(browser)) == ["dual.png", "long.png"])
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("all")
    Select(browser.find_element(By.ID, "sort-key")).select_by_value("tokens")
    wait(browser, lambda: shown(browser)[-1] == "dual.png" and shown(browser)[0] == "none.png")
    if os.environ.get(SCREENSHOT_ENV):
        browser.save_screenshot(os.environ[SCREENSHOT_ENV])
