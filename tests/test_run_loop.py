"""The one run loop: any Job through runner.run, writers as plug-ins, failures as data."""

import json
from dataclasses import dataclass
from pathlib import Path

from library.files.image_io import open_image
from library.run.jobs import ItemResult, Job, Model
from library.outputs.failures import read_failures
from library.outputs.metadata import MetadataWriter
from library.outputs.sidecar import SidecarWriter
from library.outputs.writer import ResultRow, ResultWriter
from library.run.runner import RunOptions, run
from library.files.sidecars import SidecarLayout
from tests.conftest import SCRIPT, run_script
from tests.fixtures.images import bad_images, real_photos


def load_size(path):
    """A picklable loader: the decoded image's size is the whole payload."""
    img, size = open_image(path)
    return img.size, size


class SizeModel(Model):
    loader = staticmethod(load_size)

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.batches: list[int] = []

    def process(self, items):
        self.batches.append(len(items))
        return [ItemResult(f"{w}x{h} image") if w != 64 else ItemResult.failed("too small") for w, h in
                (item.data for item in items)]


@dataclass
class SizeJob(Job):
    """A whole model family in a dozen lines: the job interface is all a new family implements."""

    batch_size: int = 2
    uses_gpu: bool = False

    def open(self) -> SizeModel:
        self.model = SizeModel(self.batch_size)
        return self.model


def test_any_job_runs_through_the_run_loop_with_resume(tmp_path):
    data = tmp_path / "data"
    photos = real_photos(data, n=3)
    writer = SidecarWriter(SidecarLayout(".cap", data))
    job = SizeJob(batch_size=2)
    outcome = run(job, writer, RunOptions(data, workers=0, progress=False))
    assert outcome.summary.done == 3 and job.model.batches == [2, 1]
    for p in photos:
        w, h = open_image(p)[0].size
        assert p.with_suffix(".cap").read_text() == f"{w}x{h} image\n"
    again = run(SizeJob(), SidecarWriter(SidecarLayout(".cap", data)),
                RunOptions(data, resume=True, workers=0, progress=False))
    assert (again.summary.done, again.summary.skipped) == (0, 3)


class RefusingWriter(ResultWriter):
    """Writes nothing for one image: its row becomes that image's failure, the others stay done."""

    def __init__(self):
        self.rows: list[ResultRow] = []

    def write(self, rows):
        self.rows += rows
        return ["disk says no" if row.path.name.startswith("astronaut") else None for row in rows]


def test_writer_errors_and_load_errors_are_failures_and_land_in_the_failures_file(tmp_path):
    data = tmp_path / "data"
    real_photos(data, n=3)
    bad_images(data)
    failures = tmp_path / "out" / "failed.jsonl"
    writer = RefusingWriter()
    outcome = run(SizeJob(batch_size=4), writer, RunOptions(data, workers=2, progress=False, failures_file=failures))
    summary = outcome.summary
    assert summary.done == 2
    reasons = dict(read_failures(failures))
    assert len(reasons) == summary.failed >= 3
    assert any(reason == "disk says no" for reason in reasons.values())
    assert all(Path(p).exists() for p in reasons)
    assert {row.path.name for row in writer.rows} >= {"astronaut.png"}


def test_metadata_writer_is_a_result_writer_with_resume(tmp_path):
    data = tmp_path / "data"
    photos = real_photos(data, n=2)
    out = tmp_path / "meta.jsonl"
    run(SizeJob(), MetadataWriter(out), RunOptions(data, workers=0, progress=False))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["image_path"] for r in rows} == {str(p.resolve()) for p in photos}
    assert all(r["caption"] == "%dx%d image" % tuple(r["image_size"]) for r in rows)
    writer = MetadataWriter(out, resume=True)
    assert all(writer.done(p) for p in photos)


def test_tagger_failures_file_beside_output_path(tmp_path, model_dir):
    data = tmp_path / "data"
    real_photos(data, n=2)
    bad_images(data)
    r = run_script(SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--output_path",
                   tmp_path / "tags.jsonl", "--max_data_loader_n_workers", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    failed = read_failures(tmp_path / "tags.failures.jsonl")
    assert failed and all(reason for _, reason in failed)
    assert f"failed {len(failed)}" in r.stdout
    explicit = tmp_path / "f.jsonl"
    r = run_script(SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--failures_file", explicit,
                   "--max_data_loader_n_workers", "0", cwd=tmp_path)
    assert r.returncode == 0 and len(read_failures(explicit)) == len(failed)


def test_profile_reports_where_the_time_went(tmp_path, model_dir):
    data = tmp_path / "data"
    real_photos(data, n=3)
    r = run_script(SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--profile",
                   "--max_data_loader_n_workers", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = next(line for line in lines if line.startswith("time: "))
    shares = [int(part.rsplit(" ", 1)[1].rstrip("%")) for part in head[len("time: "):].split(", ")]
    assert len(shares) == 4 and 97 <= sum(shares) <= 103
    assert any(line.startswith("main-process CPU per image: receive ") for line in lines)
    assert any(line.startswith("advice: ") and "-bound" in line for line in lines)
    quiet = run_script(SCRIPT, data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--skip_existing", cwd=tmp_path)
    assert quiet.returncode == 0 and "time: " not in quiet.stdout  # nothing ran: nothing to report


def test_advice_names_the_bottleneck():
    from library.run.profiling import advice

    assert advice({"receive": 0.7, "model": 0.2, "write": 0.05}).startswith("decode-bound")
    assert advice({"receive": 0.1, "model": 0.8, "write": 0.05}).startswith("model-bound")
    assert advice({"receive": 0.1, "model": 0.2, "write": 0.6}).startswith("write-bound")
