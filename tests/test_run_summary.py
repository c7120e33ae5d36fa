"""The run summary line: throughput only when images were processed (a resumed run that skips everything has none)."""

from pathlib import Path

from library.run.pipeline import RunSummary
from tests.conftest import SCRIPT, run_script
from tests.fixtures.images import real_photos


def test_rate_only_for_processed_images():
    assert RunSummary("tagged", total=5, skipped=5, seconds=0.01).lines() == ["tagged 0, skipped 5, failed 0 in 0.0 s"]
    assert RunSummary("tagged", total=0, seconds=0.0).lines() == ["tagged 0, skipped 0, failed 0 in 0.0 s"]
    busy = RunSummary("tagged", total=3, done=2, failures=[(Path("x.png"), "truncated")], seconds=1.5)
    assert busy.lines() == ["tagged 2, skipped 0, failed 1 in 1.5 s (2.0 img/s)", "  failed: x.png: truncated"]


def test_resumed_run_that_skips_everything_prints_no_rate(tmp_path, model_dir):
    data = tmp_path / "data"
    real_photos(data, n=2)
    args = (SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--batch_size", "2",
            "--max_data_loader_n_workers", "0", "--no_progress")
    assert run_script(*args, cwd=tmp_path).returncode == 0
    r = run_script(*args, "--skip_existing", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = [line for line in r.stdout.splitlines() if line.startswith("tagged ")]
    assert summary and summary[0].startswith("tagged 0, skipped 2, failed 0 in ") and "img/s" not in r.stdout
