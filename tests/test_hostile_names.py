"""File names that are not UTF-8 (b'caf\\xe9.png' from a Windows zip) round-trip through every JSON and HTML output."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from library.review.report import read_report_data
from tests.conftest import ROOT, SCRIPT
from tests.fixtures.images import real_photos

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(sys.platform in ("win32", "darwin"),
                                 reason="the file system must accept names that are not UTF-8")]
RAW_NAME = b"caf\xe9.png"  # Latin-1 'café.png': not valid UTF-8
NAME = os.fsdecode(RAW_NAME)  # 'caf\udce9.png'
REPORT = ROOT / "finetune" / "caption_report.py"
MERGE_CAPTIONS = ROOT / "finetune" / "merge_captions_to_metadata.py"
MERGE_TAGS = ROOT / "finetune" / "merge_dd_tags_to_metadata.py"


def run_bytes(script: Path, *args, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run a script; its output is decoded with surrogateescape (it may print the raw bytes of such a name)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "surrogateescape"),
                                       proc.stderr.decode("utf-8", "surrogateescape"))


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """Three photos, one of them named with a byte that is not UTF-8."""
    d = tmp_path / "data"
    photos = real_photos(d, 3)
    os.rename(photos[0], os.path.join(os.fsencode(d), RAW_NAME))
    assert RAW_NAME in os.listdir(os.fsencode(d))
    return d


def test_json_text_escapes_lone_surrogates_and_round_trips():
    from library.outputs import json_text

    name = os.fsdecode(b"/data/caf\xe9 \xff\xfe.png")
    for kw in ({}, {"indent": 2}, {"ensure_ascii": True}, {"separators": (",", ":")}):
        text = json_text.dumps({name: [name, "café ✓"]}, **kw)
        text.encode("utf-8")  # valid UTF-8: no raw surrogate left
        back = json.loads(text)
        assert list(back) == [name] and back[name] == [name, "café ✓"]
        assert os.fsencode(list(back)[0]) == b"/data/caf\xe9 \xff\xfe.png"
    assert "\\udce9" in json_text.dumps(name)
    assert json_text.printable(name) == "/data/caf\\xe9 \\xff\\xfe.png"
    assert json_text.printable("café") == "café"


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_tagger_output_path_and_report_keep_the_name(dataset, model_dir, tmp_path, suffix):
    out = tmp_path / f"meta{suffix}"
    page = tmp_path / "report.html"
    r = run_bytes(SCRIPT, dataset, "--repo_id", "org/tiny", "--model_dir", model_dir, "--output_path", out,
                  "--report", page, "--max_data_loader_n_workers", "0", "--no_progress", "--debug", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tagged 3, skipped 0, failed 0" in r.stdout
    text = out.read_text(encoding="utf-8")  # valid UTF-8
    if suffix == ".json":
        keys = list(json.loads(text))
    else:
        keys = [json.loads(line)["image_path"] for line in text.splitlines()]
    assert len(keys) == 3
    odd = [k for k in keys if k.endswith(NAME)]
    assert len(odd) == 1 and os.path.isfile(odd[0])  # the key opens the real file
    assert os.fsencode(odd[0]) == os.path.join(os.fsencode(dataset.resolve()), RAW_NAME)
    data = read_report_data(page)
    assert NAME in {row["p"] for row in data["images"]} and data["failures"] == []
    # resume keeps the entry: nothing is tagged twice
    r = run_bytes(SCRIPT, dataset, "--repo_id", "org/tiny", "--model_dir", model_dir, "--output_path", out,
                  "--skip_existing", "--max_data_loader_n_workers", "0", "--no_progress", cwd=tmp_path)
    assert r.returncode == 0 and "skipped 3" in r.stdout, r.stderr[-3000:]


def test_failures_file_and_console_name_a_bad_image_with_such_a_name(tmp_path, model_dir):
    d = tmp_path / "data"
    real_photos(d, 1)
    with open(os.path.join(os.fsencode(d), b"broken-\xe9.png"), "wb") as f:
        f.write(b"not a png")
    r = run_bytes(SCRIPT, d, "--repo_id", "org/tiny", "--model_dir", model_dir, "--output_path",
                  tmp_path / "m.jsonl", "--max_data_loader_n_workers", "0", "--no_progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "failed 1" in r.stdout and "Traceback" not in r.stderr
    assert os.fsdecode(b"broken-\xe9.png") in r.stdout  # printed as the name's own bytes
    rows = [json.loads(line) for line in (tmp_path / "m.failures.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [os.path.basename(row["path"]) for row in rows] == [os.fsdecode(b"broken-\xe9.png")]


def test_caption_report_static_page_and_title(dataset, tmp_path):
    (dataset / NAME).with_suffix(".txt").write_text("cat, cup\n", encoding="utf-8")
    odd_dir = tmp_path / os.fsdecode(b"set-\xff")
    shutil.copytree(dataset, odd_dir)
    r = run_bytes(REPORT, odd_dir, "--out", tmp_path / "r.html", "--max_data_loader_n_workers", "0",
                  "--no_progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<title>captions: set-\\xff</title>" in html
    data = read_report_data(tmp_path / "r.html")
    rows = {row["p"]: row for row in data["images"]}
    assert rows[NAME]["c"] == "cat, cup" and rows[NAME]["t"]


JS_URL = re.compile(r"  function encodePart\(s\) \{.*?\n  \}\n  const url = [^\n]*\n", re.S)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's URL function")
def test_page_links_carry_the_names_bytes():
    """The page's script turns a name's surrogateescape characters into %XX of the original bytes."""
    source = JS_URL.search((ROOT / "library" / "data" / "caption_report.js").read_text(encoding="utf-8")).group(0)
    names = ["sub/" + NAME, "a b#?.png", "😀\U0001F4A9.png", "x\ud800y.png"]
    script = source + f"console.log(JSON.stringify({json.dumps(names)}.map((n) => url('image/', n))));"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got[0] == "image/sub/caf%E9.png"
    assert got[1] == "image/a%20b%23%3F.png"
    assert got[2] == "image/%F0%9F%98%80%F0%9F%92%A9.png"  # real surrogate pairs stay characters
    assert got[3] == "image/x%EF%BF%BDy.png"


def test_caption_report_serve_page_image_and_save(dataset, tmp_path):
    from library.outputs import json_text
    from library.review.server import TOKEN_HEADER

    (dataset / NAME).with_suffix(".txt").write_text("cat\n", encoding="utf-8")
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPORT), str(dataset), "--serve", "--port", "0", "--no_progress",
                             "--max_data_loader_n_workers", "0"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = proc.stdout.readline().decode("utf-8", "surrogateescape")
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if match:
                port = int(match.group(1))
            elif not line and proc.poll() is not None:
                break
        assert port, proc.stderr.read().decode("utf-8", "surrogateescape")[-3000:]

        def request(method, path, body=None, headers=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, path, body, headers or {})
            res = conn.getresponse()
            return res.status, res.read()

        status, page = request("GET", "/")
        assert status == 200
        page.decode("utf-8")
        token = re.search(r'"token":"([^"]+)"', page.decode()).group(1)
        status, image = request("GET", "/image/caf%E9.png")  # what the page's link sends
        assert status == 200 and image == (dataset / NAME).read_bytes()
        body = json_text.dumps({"path": NAME, "text": "cat, cup", "base": "cat"}).encode()
        status, answer = request("POST", "/api/caption", body, {"Content-Type": "application/json",
                                                                 TOKEN_HEADER: token})
        assert status == 200, answer
        assert json.loads(answer)["updated"] == {NAME: "cat, cup"}
        assert (dataset / NAME).with_suffix(".txt").read_text(encoding="utf-8") == "cat, cup\n"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


@pytest.mark.parametrize("script,field,extension", [(MERGE_CAPTIONS, "caption", ".caption"),
                                                    (MERGE_TAGS, "tags", ".txt")])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_merge_scripts_keep_the_name(dataset, tmp_path, script, field, extension, suffix):
    for image in list(dataset.iterdir()):
        text = "the odd one" if image.name == NAME else f"text of {image.stem}"
        image.with_suffix(extension).write_text(text + "\n", encoding="utf-8")
    out = tmp_path / f"meta{suffix}"
    r = run_bytes(script, dataset, out, "--full_path", cwd=tmp_path)  # the GUI's default: keys are paths
    assert r.returncode == 0, r.stderr[-3000:]
    assert "merged 3" in r.stdout
    text = out.read_text(encoding="utf-8")
    rows = json.loads(text) if suffix == ".json" else {
        (row := json.loads(line)).pop("image_path"): row for line in text.splitlines()}
    key = next(k for k in rows if k.endswith(NAME))
    assert rows[key][field] == "the odd one"
    assert os.path.isfile(key)
    # the second merge reads the first one's file back
    r = run_bytes(script, dataset, out, "--full_path", cwd=tmp_path)
    assert r.returncode == 0 and "merged 3" in r.stdout, r.stderr[-3000:]
