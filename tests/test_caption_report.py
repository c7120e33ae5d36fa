"""The caption review page without a browser: static report contents, thumbnail cache, the edit server's safety."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from finetune import dataset_args
from library.review.report import ReportOptions, read_report_data, thumbs_dir_for, write_report
from library.run.pipeline import RunSummary
from library.review.edits import change_tags, line_separator
from library.review.server import TOKEN_HEADER, ReviewServer, serve
from tests.conftest import ROOT, SCRIPT, run_script
from tests.fixtures.images import bad_images
from tests.fixtures.review_dataset import CAPTIONS, many_tiny_images, review_dataset

REPORT_SCRIPT = ROOT / "finetune" / "caption_report.py"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


# ---------------------------------------------------------------- static report


def test_static_report_shows_captions_failures_missing_and_buckets(tmp_path):
    images = review_dataset(tmp_path / "ds")
    result = write_report(tmp_path / "ds", None, ReportOptions(recursive=True, workers=0, progress=False))
    page = tmp_path / "ds" / "caption_report.html"
    assert result.path == page.resolve() and result.images == len(images)
    data = read_report_data(page)
    rows = {row["p"]: row for row in data["images"]}
    assert set(rows) == set(images)
    for rel, text in CAPTIONS.items():
        assert rows[rel]["c"] == text  # dual captions keep both lines
    assert rows["astronaut.png"]["c"].count("\n") == 1
    failures = dict(data["failures"])
    assert list(failures) == ["damaged.jpg"] and "truncated" in failures["damaged.jpg"]
    assert rows["damaged.jpg"]["t"] is None and rows["damaged.jpg"]["b"] == -1
    assert {rel for rel, row in rows.items() if row["c"] is None} == {"damaged.jpg", "no_caption_yet.png"}
    assert result.without_caption == 2 and result.failures == 1
    # buckets: sd-scripts' arithmetic on every readable image (1024, buckets 256..2048)
    assert data["settings"].startswith("resolution 1024x1024")
    assert [512, 512] not in data["buckets"] and [1024, 1024] in data["buckets"]
    assert data["buckets"][rows["astronaut.png"]["b"]] == [1024, 1024]  # 512x512 photo -> the square bucket
    assert all(row["b"] >= 0 for rel, row in rows.items() if rel != "damaged.jpg")
    # thumbnails beside the page, in a hidden folder discovery never enters
    thumbs = thumbs_dir_for(page)
    assert thumbs.name == ".caption_report_thumbs"
    for rel, row in rows.items():
        if rel != "damaged.jpg":
            from PIL import Image

            with Image.open(thumbs / row["t"]) as im:
                assert max(im.size) <= 256 and im.format == "JPEG"
    # self-contained: no scripts, styles, fonts or images from the network
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "<link" not in html
    assert data["image_base"] == "" and data["thumb_base"] == ".caption_report_thumbs/"


def test_script_default_page_and_output_dir_and_misspelt_extension(tmp_path):
    ds = tmp_path / "ds"
    review_dataset(ds)
    caps = tmp_path / "caps"
    for txt in ds.rglob("*.txt"):  # captions written elsewhere with --output_dir, as .caption
        target = caps / txt.relative_to(ds).with_suffix(".caption")
        target.parent.mkdir(parents=True, exist_ok=True)
        txt.rename(target)
    before = snapshot(ds)
    r = run_script(REPORT_SCRIPT, ds, "--recursive", "--output_dir", caps, "--caption_extention", "caption",
                   "--max_data_loader_n_workers", "0", "--no_progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert snapshot(ds) == before  # a read-only dataset works: page and thumbnails go to the caption folder
    page = caps / "caption_report.html"
    assert f"caption report: {page}" in r.stdout
    data = read_report_data(page)
    rows = {row["p"]: row for row in data["images"]}
    assert rows["landscapes/valley.png"]["c"] == CAPTIONS["landscapes/valley.png"]
    assert data["caption_extension"] == ".caption" and data["caption_dir"] == str(caps.resolve())
    assert data["image_base"] == "../ds/"  # full-size images open from the page's folder


def test_thumbnails_are_cached_and_remade_only_for_changed_images(tmp_path):
    ds = tmp_path / "ds"
    images = review_dataset(ds)
    options = ReportOptions(recursive=True, workers=0, progress=False)
    write_report(ds, None, options)
    thumbs = thumbs_dir_for(ds / "caption_report.html")
    first = {p.name: p.stat().st_mtime_ns for p in thumbs.glob("*.jpg")}
    assert len(first) == len(images) - 1
    time.sleep(0.05)
    write_report(ds, None, options)
    assert {p.name: p.stat().st_mtime_ns for p in thumbs.glob("*.jpg")} == first  # nothing remade
    old = read_report_data(ds / "caption_report.html")
    old_rows = {row["p"]: row["t"] for row in old["images"]}
    from PIL import Image

    Image.new("RGB", (640, 200), (250, 20, 20)).save(images["galaxies.jpg"])  # changed image
    images["coffee.jpg"].unlink()  # removed image
    write_report(ds, None, options)
    rows = {row["p"]: row for row in read_report_data(ds / "caption_report.html")["images"]}
    now = {p.name for p in thumbs.glob("*.jpg")}
    assert rows["galaxies.jpg"]["t"] != old_rows["galaxies.jpg"] and rows["galaxies.jpg"]["w"] == 640
    assert old_rows["galaxies.jpg"] not in now and old_rows["coffee.jpg"] not in now  # stale ones pruned
    unchanged = [rel for rel in rows if rel not in ("galaxies.jpg", "damaged.jpg")]
    assert all(rows[rel]["t"] == old_rows[rel] for rel in unchanged)
    assert all(first[rows[rel]["t"]] == (thumbs / rows[rel]["t"]).stat().st_mtime_ns for rel in unchanged)


def test_run_failures_appear_in_the_report_of_a_captioning_run(tmp_path, capsys):
    ds = tmp_path / "ds"
    review_dataset(ds)
    parser = argparse.ArgumentParser()
    dataset_args.add_dataset_config_args(parser)
    args = parser.parse_args(["--report", str(tmp_path / "run.html")])
    args.recursive = True
    summary = RunSummary(verb="captioned", total=10, done=8)
    summary.failures = [(ds / "rocket.jpg", "caption kept looping after 2 retries")]
    assert dataset_args.finish_run(summary, args, ds, ".txt") == 0
    assert "caption report: " in capsys.readouterr().out
    failures = dict(read_report_data(tmp_path / "run.html")["failures"])
    assert failures["rocket.jpg"] == "caption kept looping after 2 retries"
    assert "truncated" in failures["damaged.jpg"]
    assert (tmp_path / ".run_thumbs").is_dir()


def test_every_captioning_script_has_the_report_flag():
    import importlib

    for name in ("tag_images_by_wd14_tagger", "make_captions", "make_captions_by_git", "dual_caption"):
        parser = importlib.import_module(f"finetune.{name}").setup_parser()
        assert parser.parse_args(["data", "--report", "r.html"]).report == "r.html", name


def test_tagger_run_with_report_lists_its_failures(tmp_path, model_dir):
    ds = tmp_path / "ds"
    review_dataset(ds)
    bad = bad_images(tmp_path / "bad")
    (ds / "zero.png").write_bytes(b"")
    os.replace(bad["text_as_png"], ds / "text.png")
    r = run_script(SCRIPT, ds, "--repo_id", "org/tiny", "--model_dir", model_dir, "--recursive",
                   "--max_data_loader_n_workers", "0", "--no_progress", "--report", tmp_path / "tagged.html",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "failed 3" in r.stdout and "caption report: " in r.stdout
    data = read_report_data(tmp_path / "tagged.html")
    failures = dict(data["failures"])
    assert set(failures) == {"damaged.jpg", "zero.png", "text.png"}
    assert failures["zero.png"] == "empty file (0 bytes)"
    rows = {row["p"]: row for row in data["images"]}
    assert rows["no_caption_yet.png"]["c"]  # the tagger captioned it


def test_report_reads_captions_from_a_metadata_file(tmp_path):
    ds = tmp_path / "ds"
    images = review_dataset(ds)
    for txt in ds.rglob("*.txt"):
        txt.unlink()
    meta = tmp_path / "meta.json"  # what the tagger writes with --output_path x.json
    meta.write_text(json.dumps({str(images["coffee.jpg"]): {"tags": "cup, coffee", "image_size": [600, 400]},
                                "landscapes/valley.png": {"caption": "a valley", "tags": "river, grass"}}))
    write_report(ds, tmp_path / "m.html", ReportOptions(recursive=True, workers=0, progress=False,
                                                        metadata_path=meta))
    rows = {row["p"]: row["c"] for row in read_report_data(tmp_path / "m.html")["images"]}
    assert rows["coffee.jpg"] == "cup, coffee" and rows["landscapes/valley.png"] == "a valley\nriver, grass"
    assert sum(c is None for c in rows.values()) == len(images) - 2


def test_store_edits_a_shared_caption_file_once_and_reports_every_image(tmp_path):
    from library.review.edits import CaptionStore
    from library.files.sidecars import SidecarLayout

    ds = tmp_path / "ds"
    ds.mkdir()
    from PIL import Image

    for name in ("a.png", "a.jpg", "b.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(ds / name)
    (ds / "a.txt").write_text("x, y\n")
    store = CaptionStore(ds, SidecarLayout(".txt"))
    updated, written, problems = store.change_tags(["a.png", "a.jpg", "b.png"], "add", ["z"])
    assert (ds / "a.txt").read_text() == "x, y, z\n" and (ds / "b.txt").read_text() == "z\n"
    assert written == 2 and problems == [] and updated == {"a.jpg": "x, y, z", "a.png": "x, y, z", "b.png": "z"}
    (ds / "b.txt").write_bytes(b"\xff\xfe bad")
    updated, written, problems = store.change_tags(["a.png", "b.png"], "remove", ["z"])
    assert written == 1 and problems and "not UTF-8" in problems[0] and (ds / "b.txt").read_bytes() == b"\xff\xfe bad"


# ---------------------------------------------------------------- tag edits


def test_line_separator_and_tag_changes_keep_style_and_other_lines():
    assert line_separator("a, b, c", ", ") == ", "
    assert line_separator("a,b,c", ", ") == ","
    assert line_separator("a | b | c", " | ") == " | "
    assert line_separator("single", ", ") == ", "
    dual = "1girl, long_hair, smile\nA girl with long hair smiles, happily."
    assert change_tags(dual, "add", ["hat"], ", ") == \
        "1girl, long_hair, smile, hat\nA girl with long hair smiles, happily."
    assert change_tags(dual, "remove", ["long hair"], ", ") == "1girl, smile\nA girl with long hair smiles, happily."
    assert change_tags(dual, "add", ["Smile", "long hair"], ", ") == dual.replace("smile\n", "smile, Smile\n")
    assert change_tags("a,b", "add", ["c"], ", ") == "a,b,c"
    assert change_tags("a | b", "remove", ["a"], ", ") == "a | b"  # ', ' splits nothing here: 'a | b' is one tag
    assert change_tags("a | b", "remove", ["a"], " | ") == "b"
    assert change_tags(None, "add", ["x", "y"], ", ") == "x, y"
    assert change_tags(None, "remove", ["x"], ", ") is None


# ---------------------------------------------------------------- the server


class Client:
    """http.client requests to a running ReviewServer."""

    def __init__(self, server: ReviewServer):
        self.server = server
        self.host = f"127.0.0.1:{server.port}"

    def request(self, method, path, body=None, headers=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        hdrs = {"Host": self.host}
        payload = raw
        if body is not None:
            payload = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in hdrs.items():
            if v is not None:
                conn.putheader(k, v)
        if payload is not None:
            conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders(payload)
        res = conn.getresponse()
        data = res.read()
        conn.close()
        return res.status, data

    def post(self, path, body, token=True, origin="same", **headers):
        hdrs = dict(headers)
        if token is True:
            hdrs[TOKEN_HEADER] = self.server.token
        elif token:
            hdrs[TOKEN_HEADER] = token
        if origin == "same":
            hdrs["Origin"] = f"http://{self.host}"
        elif origin:
            hdrs["Origin"] = origin
        status, data = self.request("POST", path, body, hdrs)
        return status, json.loads(data or b"{}")


@pytest.fixture()
def served(tmp_path):
    ds = tmp_path / "ds"
    review_dataset(ds)
    (ds / "notes.md").write_text("keep me\n")
    server = ReviewServer(ds, ReportOptions(recursive=True, workers=0, progress=False),
                          thumbs_dir_for(tmp_path / "review.html"), port=0)
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    yield ds, Client(server)
    server.shutdown()
    thread.join(10)


def test_server_refuses_paths_outside_the_image_list(served, tmp_path):
    ds, client = served
    (tmp_path / "outside.txt").write_text("secret\n")
    before = snapshot(tmp_path)
    for path in ("../outside.png", "../outside.txt", str(ds / "coffee.jpg"), "/etc/passwd", "coffee.txt",
                 "notes.md", "landscapes/../coffee.jpg", "./coffee.jpg", "landscapes", "", None, 3, ["coffee.jpg"]):
        status, body = client.post("/api/caption", {"path": path, "text": "hacked"})
        assert status == 404 and "not an image of this dataset" in body["error"], path
    status, body = client.post("/api/tags", {"paths": ["coffee.jpg", "../outside.png"], "op": "add", "tags": ["x"]})
    assert status == 404  # checked before anything is written
    assert snapshot(tmp_path) == before
    assert client.request("GET", "/image/../outside.txt")[0] == 404
    assert client.request("GET", "/image/%2e%2e/outside.txt")[0] == 404
    assert client.request("GET", "/thumbs/../../outside.txt")[0] == 404
    status, data = client.request("GET", "/image/landscapes/valley.png")
    assert status == 200 and data == (ds / "landscapes" / "valley.png").read_bytes()


def test_server_refuses_other_origins_hosts_and_bad_tokens(served, tmp_path):
    ds, client = served
    before = snapshot(tmp_path)
    good = {"path": "coffee.jpg", "text": "hacked"}
    assert client.post("/api/caption", good, origin="http://evil.example")[0] == 403
    assert client.post("/api/caption", good, origin="null")[0] == 403
    assert client.post("/api/caption", good, origin=f"http://localhost:{client.server.port + 1}")[0] == 403
    assert client.post("/api/caption", good, token=None)[0] == 403
    assert client.post("/api/caption", good, token="wrong")[0] == 403
    assert client.post("/api/caption", good, **{"Sec-Fetch-Site": "cross-site"})[0] == 403
    status, _ = client.request("POST", "/api/caption", good, {TOKEN_HEADER: client.server.token,
                                                              "Host": f"evil.example:{client.server.port}"})
    assert status == 403  # a rebound DNS name pointing at 127.0.0.1
    status, _ = client.request("POST", "/api/caption", None, {TOKEN_HEADER: client.server.token,
                               "Content-Type": "application/x-www-form-urlencoded"}, raw=b"path=coffee.jpg")
    assert status == 415
    assert client.request("GET", "/", headers={"Host": f"evil.example:{client.server.port}"})[0] == 403
    assert snapshot(tmp_path) == before
    # the page itself carries the token
    status, page = client.request("GET", "/")
    assert status == 200 and client.server.token.encode() in page


def test_server_saves_a_caption_atomically(served, tmp_path):
    ds, client = served
    status, body = client.post("/api/caption", {"path": "coffee.jpg", "text": "cup, coffee\r\n",
                                                "base": CAPTIONS["coffee.jpg"]})
    assert status == 200 and body["updated"] == {"coffee.jpg": "cup, coffee"}
    assert (ds / "coffee.txt").read_bytes() == b"cup, coffee\n"
    assert temp_files(tmp_path) == []
    # the file changed since the editor opened: refused, nothing lost
    status, body = client.post("/api/caption", {"path": "coffee.jpg", "text": "x", "base": "stale text"})
    assert status == 409 and (ds / "coffee.txt").read_text() == "cup, coffee\n"
    # an image without a caption gets one; the page shows it after a reload
    status, _ = client.post("/api/caption", {"path": "no_caption_yet.png", "text": "sunset, sky"})
    assert status == 200 and (ds / "no_caption_yet.txt").read_text() == "sunset, sky\n"
    # a same-origin request without an Origin header (curl, scripts) is fine with the token
    assert client.post("/api/caption", {"path": "rocket.jpg", "text": "rocket"}, origin=None)[0] == 200
    assert (ds / "notes.md").read_text() == "keep me\n"


def test_server_tag_edits_across_images_keep_separators_and_second_lines(served):
    ds, client = served
    (ds / "coffee.txt").write_text("cup,coffee,saucer\n")  # another separator style
    before_river = (ds / "landscapes" / "valley.txt").read_text()
    paths = ["astronaut.png", "coffee.jpg", "landscapes/valley.png", "no_caption_yet.png", "motorcycle.png"]
    status, body = client.post("/api/tags", {"paths": paths, "op": "add", "tags": ["masterpiece", "outdoors"]})
    assert status == 200 and body["problems"] == []
    assert (ds / "coffee.txt").read_text() == "cup,coffee,saucer,masterpiece,outdoors\n"
    river = (ds / "landscapes" / "valley.txt").read_text()
    assert river.split("\n")[0] == before_river.split("\n")[0] + ", masterpiece"  # had outdoors already
    assert river.split("\n")[1:] == before_river.split("\n")[1:]
    assert (ds / "astronaut.txt").read_text().split("\n")[1] == CAPTIONS["astronaut.png"].split("\n")[1]
    assert (ds / "no_caption_yet.txt").read_text() == "masterpiece, outdoors\n"
    assert body["written"] == 5 and set(body["updated"]) == set(paths)
    status, body = client.post("/api/tags", {"paths": paths, "op": "remove",
                                             "tags": ["masterpiece", "looking at viewer"]})
    assert status == 200
    assert (ds / "coffee.txt").read_text() == "cup,coffee,saucer,outdoors\n"
    assert (ds / "landscapes" / "valley.txt").read_text() == before_river  # back to the bytes it had
    astro = (ds / "astronaut.txt").read_text().split("\n")
    assert astro[0] == "1girl, solo, smile, short_hair, astronaut, spacesuit, flag, outdoors"
    assert astro[1] == CAPTIONS["astronaut.png"].split("\n")[1]
    for bad in ({"paths": paths, "op": "rename", "tags": ["x"]}, {"paths": [], "op": "add", "tags": ["x"]},
                {"paths": paths, "op": "add", "tags": []}, {"paths": paths, "op": "add", "tags": "x"}):
        assert client.post("/api/tags", bad)[0] == 400


def test_server_behind_a_named_reverse_proxy_only_with_allow_host(tmp_path):
    ds = tmp_path / "ds"
    review_dataset(ds)
    server = ReviewServer(ds, ReportOptions(workers=0, progress=False), thumbs_dir_for(tmp_path / "r.html"), port=0,
                          allow_hosts=["abc-8765.proxy.example"])
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    try:
        client = Client(server)
        body = {"path": "coffee.jpg", "text": "cup"}
        for host, origin, expected in (("abc-8765.proxy.example", "https://abc-8765.proxy.example", 200),
                                       ("abc-8765.proxy.example", "https://evil.example", 403),
                                       ("other.proxy.example", "https://other.proxy.example", 403)):
            status, _ = client.request("POST", "/api/caption", body, {"Host": host, "Origin": origin,
                                                                      TOKEN_HEADER: server.token})
            assert status == expected, (host, origin)
        assert (ds / "coffee.txt").read_text() == "cup\n"
    finally:
        server.shutdown()
        thread.join(10)


def test_serve_command_stops_cleanly_on_ctrl_c(tmp_path):
    ds = tmp_path / "ds"
    review_dataset(ds)
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPORT_SCRIPT), str(ds), "--recursive", "--serve", "--port", "0",
                             "--no_progress", "--max_data_loader_n_workers", "0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.time() + 60
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if match:
                url = match
            elif not line and proc.poll() is not None:
                break
        assert url, proc.stderr.read()
        port = int(url.group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        page = conn.getresponse().read().decode()
        token = re.search(r'"token":"([^"]+)"', page).group(1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/api/caption", json.dumps({"path": "rocket.jpg", "text": "rocket, launch"}),
                     {"Content-Type": "application/json", TOKEN_HEADER: token})
        assert conn.getresponse().status == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "all saved captions are on disk" in out
    assert (ds / "rocket.txt").read_text() == "rocket, launch\n" and temp_files(ds) == []
    assert not (ds / "caption_report.html").exists()  # serving writes thumbnails only


# ---------------------------------------------------------------- scale


def test_five_thousand_images_page_is_quick_and_small(tmp_path):
    t0 = time.perf_counter()
    many_tiny_images(tmp_path / "big", 5000)
    made = time.perf_counter() - t0
    page = tmp_path / "big.html"
    result = write_report(tmp_path / "big", page, ReportOptions(progress=False))
    again = write_report(tmp_path / "big", page, ReportOptions(progress=False))
    print(f"\n5,000 images ({made:.1f} s to generate): first report {result.seconds:.1f} s "
          f"(thumbnails in {os.cpu_count()} processes), cached {again.seconds:.2f} s, "
          f"page {result.page_bytes / 1e6:.2f} MB")
    assert result.images == 5000 and result.without_caption == 100 and result.failures == 0
    assert result.seconds < 60 and again.seconds < 15
    assert result.page_bytes < 10_000_000
    assert len(list(thumbs_dir_for(page).glob("*.jpg"))) == 5000
