"""The OpenAI-compatible client against hostile servers: redirects, huge and endless answers, drips, echoed keys."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import cli
from finetune.dual_caption import main, setup_parser
from tests.fixtures.hostile_http import hostile_server
from tests.fixtures.images import real_photos

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "finetune" / "dual_caption.py"
KEY = "sk-live-SECRET-4f9a1c"


def run(argv: list[str]) -> int:
    return cli.run_script(main, setup_parser(), argv=argv)


def args(server, folder, *extra: str) -> list[str]:
    return [str(folder), "--api_base", server.url, "--num-workers", "0", "--no-progress", "--mode", "tags",
            "--api_concurrency", "1", "--api_retries", "0", "--api_key_env", "CK_TEST_KEY", *extra]


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CK_TEST_KEY", KEY)
    d = tmp_path / "ds"
    real_photos(d, 2)
    return d


def test_the_key_never_goes_to_another_origin(folder, capsys):
    with hostile_server(lambda h: h.caption("from elsewhere")) as other:
        with hostile_server(lambda h: h.redirect(other.origin + h.path)) as api:
            assert run(args(api, folder)) == cli.EXIT_FATAL
        err = capsys.readouterr().err
        assert "another origin" in err and other.origin in err
        assert all(auth is None or KEY not in auth for _, _, auth in other.seen)
        assert other.seen == []  # not followed at all
    assert not list(folder.glob("*.txt"))


def test_same_origin_redirects_are_followed_with_the_key(folder):
    def route(h):
        if h.path == "/v1/chat/completions":
            h.redirect("/v2/chat/completions", 307)
        else:
            h.caption("moved, fine")

    with hostile_server(route) as api:
        assert run(args(api, folder)) == cli.EXIT_OK
        assert ("POST", "/v2/chat/completions", f"Bearer {KEY}") in api.seen
    assert [p.read_text() for p in sorted(folder.glob("*.txt"))] == ["moved, fine\n"] * 2


def test_answers_over_the_cap_are_that_images_error(folder, capsys):
    calls = []

    def route(h):
        calls.append(h.path)
        if len(calls) == 1:
            h.caption("x" * (5 * 2**20))  # 5 MiB with a Content-Length: refused before reading it
        else:
            h.endless()  # no length, no end: reading stops at the cap

    with hostile_server(route) as api:
        start = time.monotonic()
        code = run(args(api, folder, "--api_timeout", "30"))
        elapsed = time.monotonic() - start
        sent = api.sent_bytes
    out = capsys.readouterr().out
    assert code == cli.EXIT_ALL_FAILED  # every attempted image failed
    assert out.count("larger than 4 MiB") == 2 and "failed 2" in out
    assert sent < 24 * 2**20 and elapsed < 20  # the endless answer was cut off near the 4 MiB cap
    assert not list(folder.glob("*.txt"))


def test_api_timeout_bounds_the_whole_request_of_a_dripping_server(folder, capsys):
    calls = []

    def route(h):
        calls.append(h.path)
        if len(calls) == 1:
            h.endless(chunk=b"A", pause=0.1)  # the body one byte at a time
        else:
            h.drip_headers(0.1)  # the status line and headers one byte at a time

    with hostile_server(route) as api:
        start = time.monotonic()
        code = run(args(api, folder, "--api_timeout", "1.5"))
        elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    assert code == cli.EXIT_ALL_FAILED
    assert out.count("no complete answer within 1.5 s") == 2
    assert elapsed < 8  # two requests of 1.5 s each, not one per byte


def test_a_long_retry_after_is_capped_and_said(folder, capsys, monkeypatch):
    from library.joycaption import api as api_module

    monkeypatch.setattr(api_module, "MAX_RETRY_AFTER", 1.0)  # the cap (300 s by default) made short for the test
    calls = []

    def route(h):
        calls.append(time.monotonic())
        if len(calls) == 1:
            h.json(429, {"error": {"message": "slow down"}}, {"Retry-After": "3600"})
        else:
            h.caption("after the wait")

    with hostile_server(route) as api:
        assert run(args(api, folder, "--api_retries", "1")) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "waiting 1 s as the server asks (Retry-After) (it asked for 3600 s; 1 s at most)" in err
    assert "HTTP 429: slow down" in err
    assert 0.9 <= calls[1] - calls[0] < 5


def test_a_key_echoed_by_the_server_is_redacted_in_logs_failures_report_and_captions(tmp_path):
    d = tmp_path / "ds"
    real_photos(d, 2)
    calls = []

    def route(h):
        calls.append(h.path)
        if len(calls) == 1:
            h.json(400, {"error": {"message": f"invalid request for key {KEY}"}})
        else:
            h.caption(f"tag_one, {KEY}, tag_two")

    env = dict(os.environ, CK_TEST_KEY=KEY, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    with hostile_server(route) as api:
        proc = subprocess.run([sys.executable, str(SCRIPT), *args(api, d, "--report", str(tmp_path / "r.html"),
                                                                    "--failures_file", str(tmp_path / "f.jsonl"),
                                                                    "--debug")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed 1" in proc.stdout and "[API key]" in proc.stdout
    written = [p.read_text() for p in d.glob("*.txt")]
    assert written == ["tag_one, [API key], tag_two\n"]
    for text in (proc.stdout, proc.stderr, (tmp_path / "r.html").read_text(), (tmp_path / "f.jsonl").read_text(),
                 *written):
        assert KEY not in text
