"""dual_caption.py against a real OpenAI-compatible HTTP server on 127.0.0.1: request shape, retries, concurrency."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import cli
from finetune.dual_caption import main, setup_parser
from library.files.sidecars import one_line
from library.joycaption.api import JpegDataUrlLoader, normalize_base, parse_retry_after
from library.joycaption.prompts import build_prompt
from tests.fixtures.dual_caption_server import chat_server, expected_caption
from tests.fixtures.images import bad_images, real_photos

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "finetune" / "dual_caption.py"
TAGS = build_prompt("Booru-like tag list", "50")
DESC = build_prompt("Straightforward", "160")


def run(argv: list[str]) -> int:
    return cli.run_script(main, setup_parser(), argv=argv)


def api_args(server, *extra: str) -> list[str]:
    return ["--api_base", server.url, "--num-workers", "0", "--no-progress", "--api_backoff", "0.02", *extra]


def expected_file(image: Path) -> str:
    url, _ = JpegDataUrlLoader(384)(image)
    return one_line(expected_caption(url, TAGS)) + "\n" + one_line(expected_caption(url, DESC)) + "\n"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return real_photos(tmp_path_factory.mktemp("photos"), 6)


def copy_photos(photos, folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in photos[:n]:
        (folder / p.name).write_bytes(p.read_bytes())
        out.append(folder / p.name)
    return out


def test_folder_written_with_requested_concurrency_and_request_shape(photos, tmp_path):
    images = copy_photos(photos, tmp_path / "ds", 6)
    with chat_server(delay=0.15) as server:
        assert run(api_args(server, str(tmp_path / "ds"), "--api_concurrency", "3")) == 0
    assert server.errors == []
    assert len(server.requests) == 12  # two captions per image, no retries needed
    assert server.max_in_flight == 3
    prompts = sorted(r["messages"][1]["content"][1]["text"] for r in server.requests)
    assert prompts == sorted([TAGS] * 6 + [DESC] * 6)
    first = server.requests[0]
    assert first["messages"][0]["content"].startswith("You are a helpful assistant")
    assert first["temperature"] == 0.6 and first["top_p"] == 0.9 and "top_k" not in first
    for image in images:
        text = image.with_suffix(".txt").read_text(encoding="utf-8")
        assert text == expected_file(image)  # tags line, description line, newlines inside collapsed


def test_retries_on_429_500_timeouts_and_dropped_connections(photos, tmp_path):
    images = copy_photos(photos, tmp_path / "ds", 2)
    with chat_server(slow_seconds=1.2, retry_after="1") as server:
        server.plan = ["429", "500", "slow", "drop", "503"]
        start = time.monotonic()
        code = run(api_args(server, str(tmp_path / "ds"), "--api_concurrency", "1", "--api_timeout", "0.5",
                            "--greedy"))
        elapsed = time.monotonic() - start
    assert code == 0 and server.errors == []
    assert len(server.requests) == 4 + 5  # every failure was retried once
    # Retry-After: 1 was honoured after the 429 (the first request) and the 503
    assert server.times[1] - server.times[0] >= 0.95
    assert elapsed >= 2.0
    assert all(r["temperature"] == 0.0 for r in server.requests)  # --greedy
    for image in images:
        assert image.with_suffix(".txt").read_text(encoding="utf-8") == expected_file(image)


def test_gives_up_after_api_retries_and_reports_the_image(photos, tmp_path, capsys):
    images = copy_photos(photos, tmp_path / "ds", 1)
    with chat_server() as server:
        server.plan = ["500"] * 3
        code = run(api_args(server, str(tmp_path / "ds"), "--api_concurrency", "1", "--api_retries", "2",
                            "--mode", "tags"))
    out = capsys.readouterr().out
    assert code == cli.EXIT_ALL_FAILED and len(server.requests) == 3  # its only image failed
    assert "failed 1" in out and "HTTP 500" in out and "gave up after 3 attempts" in out
    assert not images[0].with_suffix(".txt").exists()


def test_loops_are_retried_then_reported(photos, tmp_path, capsys):
    images = copy_photos(photos, tmp_path / "ds", 1)
    with chat_server() as server:
        # round 1: tags loop, description refuses; round 2: tags fine, description cut off; round 3: fine
        server.plan = ["loop", "refuse", "ok", "cut"]
        assert run(api_args(server, str(tmp_path / "ds"), "--api_concurrency", "1")) == 0
        assert len(server.requests) == 5
        assert images[0].with_suffix(".txt").read_text(encoding="utf-8") == expected_file(images[0])
        seeds = [r.get("seed") for r in server.requests]
        from library.run.jobs import image_seed

        # each image's own seed from --seed 42 and its path (batch-invariant), another one for each retry
        assert seeds[0] == image_seed(42, f"{images[0].name}#tags") % 2**31
        assert seeds[2] != seeds[0] and seeds[4] not in (seeds[0], seeds[2])
        temps = [r["temperature"] for r in server.requests]
        assert temps[0] == 0.6 < temps[2] < temps[4]  # each retry samples a little hotter

        images[0].with_suffix(".txt").unlink()
        server.plan = ["loop", "cut"] * 3  # (tags, description) per round: tags always loop, description cut off
        server.requests.clear()
        assert run(api_args(server, str(tmp_path / "ds"), "--api_concurrency", "1", "--max-retries", "2")) == cli.EXIT_ALL_FAILED
        assert len(server.requests) == 6
    out = capsys.readouterr().out
    assert "failed 1" in out and "tags: kept repeating itself after 3 attempts" in out
    assert not images[0].with_suffix(".txt").exists()  # never half a caption file


def test_cut_off_caption_is_written_with_a_warning(photos, tmp_path, capsys):
    images = copy_photos(photos, tmp_path / "ds", 1)
    with chat_server() as server:
        server.plan = ["ok", "cut"]
        assert run(api_args(server, str(tmp_path / "ds"), "--api_concurrency", "1", "--max-retries", "0")) == 0
    out = capsys.readouterr()
    lines = images[0].with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and lines[1] and expected_file(images[0]).splitlines()[1].startswith(lines[1])
    assert "1 captions hit the token limit" in out.out and "cut off at the token limit" in out.err


def test_skip_existing_overwrite_single_file_recursive_and_bad_images(photos, tmp_path, capsys):
    ds = tmp_path / "ds"
    images = copy_photos(photos, ds, 2)
    nested = copy_photos(photos[2:], ds / "sub" / "deeper", 1)[0]
    bad = bad_images(ds)
    images[0].with_suffix(".txt").write_text("keep me\n", encoding="utf-8")
    with chat_server() as server:
        assert run(api_args(server, str(ds))) == 0
        out = capsys.readouterr().out
        assert images[0].with_suffix(".txt").read_text(encoding="utf-8") == "keep me\n"
        assert images[1].with_suffix(".txt").read_text(encoding="utf-8") == expected_file(images[1])
        assert not nested.with_suffix(".txt").exists()  # not recursive
        assert "skipped 1" in out and "failed 5" in out  # zero bytes, 2 truncated, text, bomb
        assert not bad["zero_bytes"].with_suffix(".txt").exists()
        assert not (ds / ".hidden.txt").exists() and not (ds / "._photo.txt").exists()

        assert run(api_args(server, str(ds), "--recursive", "--overwrite")) == 0
        assert images[0].with_suffix(".txt").read_text(encoding="utf-8") == expected_file(images[0])
        assert nested.with_suffix(".txt").read_text(encoding="utf-8") == expected_file(nested)

        server.requests.clear()
        assert run(api_args(server, str(images[1]), "--overwrite", "--mode", "description",
                            "--caption_extension", "caption")) == 0
        assert len(server.requests) == 1
        description = expected_file(images[1]).split("\n")[1]
        assert images[1].with_suffix(".caption").read_text(encoding="utf-8") == description + "\n"


def test_script_subprocess_workers_key_from_env_and_unreachable_server(photos, tmp_path):
    images = copy_photos(photos, tmp_path / "ds", 3)
    env = {**os.environ, "MY_CAPTION_KEY": "sk-test-123", "HF_HUB_OFFLINE": "1"}
    with chat_server(api_key="sk-test-123") as server:
        cmd = [sys.executable, str(SCRIPT), str(tmp_path / "ds"), "--api-base", server.url, "--api-key-env",
               "MY_CAPTION_KEY", "--num_workers", "2", "--api-concurrency", "2"]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "captioned 3, skipped 0, failed 0" in proc.stdout
        assert set(server.auth_headers) == {"Bearer sk-test-123"}
        for image in images:
            assert image.with_suffix(".txt").read_text(encoding="utf-8") == expected_file(image)

        wrong = {**env, "MY_CAPTION_KEY": "sk-wrong"}
        proc = subprocess.run(cmd + ["--overwrite"], cwd=tmp_path, env=wrong, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 1 and "refused the API key" in proc.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "ds"), "--overwrite", "--api_base",
                           f"http://127.0.0.1:{port}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert f"error: cannot reach the API server at http://127.0.0.1:{port}/v1" in proc.stderr
    assert proc.stderr.count("\n") <= 3  # a clear message, no traceback


def test_helpers():
    assert normalize_base("http://h:8000") == "http://h:8000/v1"
    assert normalize_base("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base("http://h:8000/v1/chat/completions") == "http://h:8000/v1"
    assert normalize_base("https://api.example.com/openai") == "https://api.example.com/openai"
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("99999") == 300.0


def test_dual_captions_get_a_wildcard_dataset_config(photos, tmp_path):
    """Two-line captions need enable_wildcard, or sd-scripts trains on the first line only."""
    import tomllib

    copy_photos(photos, tmp_path / "ds", 2)
    toml_path = tmp_path / "dataset.toml"
    with chat_server() as server:
        assert run(api_args(server, str(tmp_path / "ds"), "--dataset_config", str(toml_path))) == 0
    subsets = tomllib.loads(toml_path.read_text())["datasets"][0]["subsets"]
    assert subsets[0]["enable_wildcard"] is True and subsets[0]["caption_extension"] == ".txt"
    assert len((tmp_path / "ds" / photos[0].with_suffix(".txt").name).read_text().splitlines()) == 2
