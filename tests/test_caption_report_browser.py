"""The caption review page in headless Chromium: the static page from disk, and editing through the local server."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from library.review.report import ReportOptions, render_page, thumbs_dir_for, write_report
from library.review.server import ReviewServer, serve
from tests.fixtures.browser import CHROMEDRIVER, CHROMIUM, missing_browser
from tests.fixtures.review_dataset import CAPTIONS, review_dataset

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")
webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium (requirements-test.txt)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SCREENSHOT_ENV = "CAPTIONKIT_SCREENSHOT"  # set to a path (e.g. docs/caption_report.png) to keep the screenshot


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver
    profile = tempfile.mkdtemp(prefix="captionkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1440,1200", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, timeout=15):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition())


def open_page(driver, url):
    driver.get(url)
    wait(driver, lambda: driver.execute_script("return document.body.dataset.ready") == "1")


def shown(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('#grid .card')).map(c => c.dataset.path)")


def card(driver, rel):
    return driver.find_element(By.CSS_SELECTOR, f'#grid .card[data-path="{rel}"]')


def click(driver, element):
    """Scroll the element clear of the sticky toolbar, then click it as a user would."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def type_into(driver, element_id, text):
    box = driver.find_element(By.ID, element_id)
    box.clear()
    if text:
        box.send_keys(text)
    driver.execute_script("arguments[0].dispatchEvent(new Event('input'))", box)


def tags_of(text: str) -> list[str]:
    tags = text.split("\n")[0].split(", ")
    return tags if len(tags) > 1 else []


def test_static_page_from_disk_shows_filters_and_sorts(browser, tmp_path):
    images = review_dataset(tmp_path / "ds")
    result = write_report(tmp_path / "ds", tmp_path / "report.html",
                          ReportOptions(recursive=True, workers=0, progress=False))
    open_page(browser, result.path.as_uri())
    names = sorted(images, key=str.lower)
    assert shown(browser) == names
    for rel, text in CAPTIONS.items():  # every caption, both lines of dual captions
        shown_text = card(browser, rel).find_element(By.CSS_SELECTOR, ".caption").text
        for tag in tags_of(text):
            assert tag in shown_text, rel
        for line in text.split("\n")[1 if tags_of(text) else 0:]:
            assert line in shown_text, rel
    for rel in ("no_caption_yet.png", "damaged.jpg"):
        assert "no caption" in card(browser, rel).text
    assert "damaged.jpg" in browser.find_element(By.ID, "failure-list").text
    assert "truncated" in browser.find_element(By.ID, "failure-list").text
    assert browser.find_element(By.ID, "missing-list").text.split("\n") == ["damaged.jpg", "no_caption_yet.png"]
    assert "1024\u00d71024" in browser.find_element(By.ID, "bucket-table").text
    tag_rows = browser.find_element(By.ID, "tag-table").text
    assert tag_rows.split("\n")[0].startswith("no_humans")
    # thumbnails load from the folder beside the page (lazy images are all near the first screen here)
    wait(browser, lambda: browser.execute_script(
        "return Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)"))
    assert browser.execute_script("return document.querySelectorAll('#grid img[loading=lazy]').length") == 9

    type_into(browser, "filter-text", "whiskers")
    wait(browser, lambda: shown(browser) == ["chelsea.png"])
    type_into(browser, "filter-text", "")
    type_into(browser, "filter-tags", "no_humans, -scenery")
    expect = [r for r in names if r in CAPTIONS and "no_humans" in tags_of(CAPTIONS[r])
              and "scenery" not in tags_of(CAPTIONS[r])]
    wait(browser, lambda: shown(browser) == expect)
    assert "showing 2 of 10 images" == browser.find_element(By.ID, "shown-count").text
    type_into(browser, "filter-tags", "")
    browser.find_element(By.CSS_SELECTOR, '#tag-table tr[data-key="scenery"]').click()  # a click filters by tag
    wait(browser, lambda: shown(browser) == [r for r in names if r in CAPTIONS and "scenery" in tags_of(CAPTIONS[r])])
    type_into(browser, "filter-tags", "")
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("missing")
    wait(browser, lambda: shown(browser) == ["damaged.jpg", "no_caption_yet.png"])
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("all")

    Select(browser.find_element(By.ID, "sort-key")).select_by_value("tags")
    browser.find_element(By.ID, "sort-dir").click()  # descending
    wait(browser, lambda: shown(browser)[0] == "astronaut.png")
    counts = [len(tags_of(CAPTIONS.get(r, ""))) for r in shown(browser)]
    assert counts == sorted(counts, reverse=True)
    Select(browser.find_element(By.ID, "sort-key")).select_by_value("length")
    browser.find_element(By.ID, "sort-dir").click()  # ascending again
    wait(browser, lambda: shown(browser)[:2] == ["damaged.jpg", "no_caption_yet.png"])
    lengths = [len(CAPTIONS[r]) for r in shown(browser)[2:]]
    assert lengths == sorted(lengths)
    Select(browser.find_element(By.ID, "sort-key")).select_by_value("name")
    wait(browser, lambda: shown(browser) == names)

    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "caption_report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000


@pytest.fixture()
def live(tmp_path):
    ds = tmp_path / "lora_dataset"
    review_dataset(ds)
    server = ReviewServer(ds, ReportOptions(recursive=True, workers=0, progress=False),
                          thumbs_dir_for(tmp_path / "review.html"), port=0)
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    yield ds, server
    server.shutdown()
    thread.join(10)


def status_text(browser) -> str:
    return browser.find_element(By.ID, "status-msg").text


def test_served_page_edits_a_caption_and_tags_of_selected_images(browser, live, tmp_path):
    ds, server = live
    open_page(browser, server.url)
    coffee = card(browser, "coffee.jpg")
    coffee.find_element(By.CSS_SELECTOR, ".edit-btn").click()
    area = coffee.find_element(By.CSS_SELECTOR, "textarea")
    assert area.get_attribute("value") == CAPTIONS["coffee.jpg"]
    area.clear()
    area.send_keys("no_humans, cup, latte art")
    coffee.find_element(By.CSS_SELECTOR, ".save-btn").click()
    wait(browser, lambda: status_text(browser) == "saved coffee.jpg")
    assert (ds / "coffee.txt").read_text(encoding="utf-8") == "no_humans, cup, latte art\n"
    assert list(ds.rglob("*.tmp")) == []
    assert "latte art" in card(browser, "coffee.jpg").text  # the card shows the saved caption

    for rel in ("astronaut.png", "landscapes/valley.png"):
        card(browser, rel).find_element(By.CSS_SELECTOR, "input.pick").click()
    assert browser.find_element(By.ID, "selected-count").text == "2 selected"
    type_into(browser, "tag-input", "masterpiece, best quality")
    browser.find_element(By.ID, "tag-add").click()
    wait(browser, lambda: status_text(browser).startswith("added"))
    for rel, name in (("astronaut.png", "astronaut.txt"), ("landscapes/valley.png", "landscapes/valley.txt")):
        lines = (ds / name).read_text(encoding="utf-8").split("\n")
        assert lines[0] == CAPTIONS[rel].split("\n")[0] + ", masterpiece, best quality"
        assert lines[1] == CAPTIONS[rel].split("\n")[1]
    assert "best quality" in card(browser, "astronaut.png").text
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "caption_report_live.png")  # the README's picture
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
    browser.find_element(By.ID, "tag-remove").click()
    wait(browser, lambda: status_text(browser).startswith("removed"))
    assert (ds / "astronaut.txt").read_text(encoding="utf-8") == CAPTIONS["astronaut.png"] + "\n"

    # someone else changed the file since the page loaded: the save is refused and the disk keeps their text
    (ds / "rocket.txt").write_text("edited elsewhere\n", encoding="utf-8")
    rocket = card(browser, "rocket.jpg")
    click(browser, rocket.find_element(By.CSS_SELECTOR, ".edit-btn"))
    rocket.find_element(By.CSS_SELECTOR, "textarea").send_keys(", launch")
    click(browser, rocket.find_element(By.CSS_SELECTOR, ".save-btn"))
    wait(browser, lambda: "changed on disk" in status_text(browser))
    assert (ds / "rocket.txt").read_text(encoding="utf-8") == "edited elsewhere\n"

    # an unsaved edit survives filtering the grid away and back
    chelsea = card(browser, "chelsea.png")
    click(browser, chelsea.find_element(By.CSS_SELECTOR, ".edit-btn"))
    chelsea.find_element(By.CSS_SELECTOR, "textarea").send_keys(", tabby")
    type_into(browser, "filter-text", "no image has this")
    wait(browser, lambda: shown(browser) == [])
    type_into(browser, "filter-text", "")
    wait(browser, lambda: "chelsea.png" in shown(browser))
    draft = card(browser, "chelsea.png").find_element(By.CSS_SELECTOR, "textarea").get_attribute("value")
    assert draft == CAPTIONS["chelsea.png"] + ", tabby"


def test_twenty_thousand_image_page_opens_quickly(browser, tmp_path):
    page = tmp_path / "big.html"
    thumbs = thumbs_dir_for(page)
    thumbs.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), (40, 120, 220)).save(thumbs / ("0" * 20 + ".jpg"))
    rows = [{"p": f"set_{i // 1000:02d}/img_{i:05d}.png", "t": "0" * 20 + ".jpg", "w": 832, "h": 1216, "b": 0,
             "c": ", ".join(f"tag_{(i * 7 + k * 13) % 500}" for k in range(15)) + "\nA picture number %d." % i}
            for i in range(20_000)]
    data = {"title": "big", "root": str(tmp_path), "generated": "now", "caption_extension": ".txt",
            "caption_dir": None, "separator": ", ", "settings": "resolution 1024x1024", "buckets": [[832, 1216]],
            "images": rows, "failures": [], "mode": "static", "token": "", "editable": False, "image_base": "",
            "thumb_base": thumbs.name + "/"}
    page.write_text(render_page(data), encoding="utf-8")
    start = time.perf_counter()
    open_page(browser, page.as_uri())
    opened = time.perf_counter() - start
    in_dom = len(shown(browser))
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    wait(browser, lambda: len(shown(browser)) > in_dom)  # more cards as the user scrolls
    start = time.perf_counter()
    type_into(browser, "filter-tags", "tag_7")
    wait(browser, lambda: browser.find_element(By.ID, "shown-count").text.startswith("showing")
         and "of 20,000" in browser.find_element(By.ID, "shown-count").text
         and not browser.find_element(By.ID, "shown-count").text.startswith("showing 20,000"))
    filtered = time.perf_counter() - start
    print(f"\n20,000-image page: {page.stat().st_size / 1e6:.1f} MB, opened in {opened:.2f} s with {in_dom} cards "
          f"in the DOM, tag filter {filtered:.2f} s")
    assert in_dom <= 400 and opened < 20
