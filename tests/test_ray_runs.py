"""--ray on a local Ray cluster: each script's Ray path on folders with bad files, WebDataset shards and parquet
tables gives the single-machine captions, and a rerun skips the work already done."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from finetune import cli
from tests.conftest import SCRIPT, foreign_library
from tests.fixtures.images import bad_images, real_photos

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]
SKIP_REASON = 'Ray Data is an optional extra (pip install "ray[data]"); CI installs it'


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (4 logical CPUs: actors and read tasks never starve each other)."""
    ray = pytest.importorskip("ray", reason=SKIP_REASON)
    pytest.importorskip("ray.data", reason=SKIP_REASON)
    from library.distributed.runner import runtime_env

    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def run(module_name: str, argv) -> int:
    """Run finetune/<module_name>.py's main in this process (the Ray connection of the fixture is reused)."""
    import importlib

    module = importlib.import_module(f"finetune.{module_name}")
    return cli.run_script(module.main, module.setup_parser(), argv=[str(a) for a in argv])


def captions(folder: Path, ext: str) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*" + ext))}


def summary_line(out: str) -> str:
    return next(line for line in out.splitlines() if " skipped " in line and " failed " in line)


def read_table(path: Path) -> dict[str, dict]:
    """Rows of a --ray_output file or folder, by the name of the image (member) they belong to."""
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    rows = []
    for f in files:
        if f.suffix == ".jsonl":
            rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
        else:
            rows += pq.read_table(f).to_pylist()
    by_name = {Path(r["image_path"]).stem: r for r in rows}
    assert len(by_name) == len(rows), "one row per image"
    return by_name


def make_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return real_photos(tmp_path_factory.mktemp("ray_photos"), n=4)


@pytest.fixture(scope="module")
def tagger_reference(photos, model_dir, tmp_path_factory):
    """Single-machine tagger captions of the photos, by stem."""
    out = tmp_path_factory.mktemp("tagger_reference")
    assert run("tag_images_by_wd14_tagger", [photos[0].parent, "--repo_id", "org/tiny", "--model_dir", model_dir,
                                             "--batch_size", 2, "--max_data_loader_n_workers", 0, "--output_dir", out,
                                             "--no_progress"]) == 0
    return captions(out, ".txt")


def test_tagger_folder_with_bad_files_matches_single_machine_and_resumes(cluster, model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    real_photos(data, n=4)
    (data / "sub").mkdir()
    real_photos(data / "sub", n=1)
    broken = bad_images(data)
    common = [data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--batch_size", 2, "--recursive",
              "--remove_underscore", "--max_data_loader_n_workers", 0, "--no_progress"]
    assert run("tag_images_by_wd14_tagger", common + ["--output_dir", tmp_path / "single"]) == 0
    capsys.readouterr()
    assert run("tag_images_by_wd14_tagger", common + ["--output_dir", tmp_path / "ray", "--ray",
                                                      "--frequency_tags"]) == 0
    out = capsys.readouterr().out
    assert summary_line(out).startswith("tagged 5, skipped 0, failed 5")
    for kind in ("zero_bytes", "truncated_jpeg", "truncated_png", "text_as_png", "decompression_bomb"):
        assert f"failed: {broken[kind]}" in out
    assert "Tag frequencies:" in out
    single = {str(p.relative_to(tmp_path / "single")): p.read_bytes() for p in (tmp_path / "single").rglob("*.txt")}
    via_ray = {str(p.relative_to(tmp_path / "ray")): p.read_bytes() for p in (tmp_path / "ray").rglob("*.txt")}
    assert len(single) == 5 and via_ray == single

    (tmp_path / "ray" / "sub" / "astronaut.txt").unlink()
    kept = tmp_path / "ray" / "coffee.txt"
    kept.write_text("my own edit\n", encoding="utf-8")
    assert run("tag_images_by_wd14_tagger", common + ["--output_dir", tmp_path / "ray", "--ray",
                                                      "--skip_existing"]) == 0
    assert summary_line(capsys.readouterr().out).startswith("tagged 1, skipped 4, failed 5")
    assert (tmp_path / "ray" / "sub" / "astronaut.txt").read_bytes() == single["sub/astronaut.txt"]
    assert kept.read_text(encoding="utf-8") == "my own edit\n"


def test_tagger_metadata_file_is_written_by_the_driver_as_on_one_machine(cluster, model_dir, tmp_path, capsys):
    """Any writer works on Ray: the --output_path metadata file (a driver-side writer) matches the local run's."""
    data = tmp_path / "data"
    real_photos(data, n=3)
    bad_images(data)
    common = [data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--max_data_loader_n_workers", 0,
              "--no_progress"]
    assert run("tag_images_by_wd14_tagger", common + ["--output_path", tmp_path / "single.json"]) == 0
    assert run("tag_images_by_wd14_tagger", common + ["--output_path", tmp_path / "ray.json", "--ray"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " skipped " in line]
    assert len(lines) == 2 and all(line.startswith("tagged 3, skipped 0, failed 5") for line in lines)
    single = json.loads((tmp_path / "single.json").read_text(encoding="utf-8"))
    assert len(single) == 3 and json.loads((tmp_path / "ray.json").read_text(encoding="utf-8")) == single
    failures = [json.loads(line) for line in (tmp_path / "ray.failures.jsonl").read_text().splitlines()]
    assert len(failures) == 5 and all(row["reason"] for row in failures)
    assert not any((data / name).exists() for name in ("astronaut.txt", "coffee.txt"))  # no sidecars written


def test_tagger_webdataset_shards_to_a_folder_of_shard_files(cluster, model_dir, photos, tagger_reference, tmp_path,
                                                             capsys):
    shards = tmp_path / "shards"
    (shards / "part2").mkdir(parents=True)
    make_shard(shards / "000000.tar", {"000000.png": photos[0].read_bytes(), "000000.txt": b"old caption",
                                       "000000.json": b"{}", "000001.jpg": photos[1].read_bytes(),
                                       "000002.png": b""})
    make_shard(shards / "part2" / "000001.tar", {"000003.jpg": photos[3].read_bytes(),
                                                 "000004.png": photos[2].read_bytes()})
    whole = make_shard(tmp_path / "whole.tar", {"a.png": b"x" * 3000, "b.png": b"y" * 3000})
    (shards / "broken.tar").write_bytes(whole.read_bytes()[:2000])  # cut off inside its first member
    out = tmp_path / "out"
    argv = [shards, "--repo_id", "org/tiny", "--model_dir", model_dir, "--batch_size", 2, "--recursive", "--ray",
            "--ray_output", out, "--no_progress"]
    assert run("tag_images_by_wd14_tagger", argv) == 0
    text = capsys.readouterr().out
    assert summary_line(text).startswith("tagged 4, skipped 0, failed 2")
    assert "000002.png: empty file (0 bytes)" in text and "cannot read the shard" in text
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet"))
    assert files == ["000000.parquet", "broken.parquet", "part2/000001.parquet"]
    rows = read_table(out)
    expected = {"000000": photos[0], "000001": photos[1], "000003": photos[3], "000004": photos[2]}
    first, second = (shards / "000000.tar").resolve(), (shards / "part2" / "000001.tar").resolve()
    for name, photo in expected.items():
        row = rows[name]
        assert row["caption"] + "\n" == tagger_reference[photo.stem] and row["error"] is None
        assert row["image_path"] == f"{first if name < '000003' else second}/{name}{photo.suffix}"
        assert row["image_size"] and set(row["caption"].split(", ")) <= {t for t, _ in row["scores"]}
    assert rows["000002"]["caption"] is None and rows["000002"]["error"] == "empty file (0 bytes)"

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert run("tag_images_by_wd14_tagger", argv + ["--skip_existing"]) == 0  # whole shard files skipped: nothing tried
    assert summary_line(capsys.readouterr().out).startswith("tagged 0, skipped 6, failed 0")  # rows of 3 shard files
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == stamps


def test_tagger_parquet_of_bytes_to_jsonl_retries_failures_on_resume(cluster, model_dir, photos, tagger_reference,
                                                                     tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"img/{p.name}" for p in photos] + ["img/zero.png"]
    blobs = [p.read_bytes() for p in photos] + [b""]
    image = pa.array([{"bytes": b, "path": n} for b, n in zip(blobs, names)],  # Hugging Face datasets' layout
                     type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = tmp_path / "table.parquet"
    pq.write_table(pa.table({"image_path": names, "image": image}), table, row_group_size=2)
    out = tmp_path / "tags.jsonl"
    argv = [table, "--repo_id", "org/tiny", "--model_dir", model_dir, "--ray", "--ray_output", out, "--no_progress"]
    assert run("tag_images_by_wd14_tagger", argv) == 0
    assert summary_line(capsys.readouterr().out).startswith("tagged 4, skipped 0, failed 1")
    rows = read_table(out)
    for photo in photos:
        assert rows[photo.stem]["caption"] + "\n" == tagger_reference[photo.stem]
        assert rows[photo.stem]["image_path"] == f"img/{photo.name}"
    assert rows["zero"] == {"image_path": "img/zero.png", "caption": None, "image_size": None,
                            "error": "empty file (0 bytes)"}

    assert run("tag_images_by_wd14_tagger", argv + ["--skip_existing"]) == 3  # every image it tried failed
    assert summary_line(capsys.readouterr().out).startswith("tagged 0, skipped 4, failed 1")  # the failure is retried
    assert read_table(out) == rows
    assert run("tag_images_by_wd14_tagger", argv[:-1] + ["--append_tags", "--no_progress"]) == 1
    assert "--append_tags merges into caption files" in capsys.readouterr().err


def test_blip_folder_with_bad_files_matches_single_machine(cluster, tmp_path, capsys):
    from tests.fixtures.captioner_models import make_blip

    model = make_blip(tmp_path / "blip")
    data = tmp_path / "data"
    real_photos(data, n=3)
    (data / "zero.png").write_bytes(b"")
    common = [data, "--model_id", model, "--beam_search", "--num_beams", 2, "--max_length", 10, "--batch_size", 2,
              "--device", "cpu", "--max_data_loader_n_workers", 0, "--no_progress", "--caption_extension", ".txt"]
    assert run("make_captions", common + ["--output_dir", tmp_path / "single"]) == 0
    capsys.readouterr()
    assert run("make_captions", common + ["--output_dir", tmp_path / "ray", "--ray"]) == 0
    assert summary_line(capsys.readouterr().out).startswith("captioned 3, skipped 0, failed 1")
    single = captions(tmp_path / "single", ".txt")
    assert len(single) == 3 and all(v.strip() for v in single.values())
    assert captions(tmp_path / "ray", ".txt") == single


def test_git_webdataset_shard_to_parquet_matches_single_machine(cluster, photos, tmp_path, capsys):
    import pyarrow.parquet as pq

    from tests.fixtures.captioner_models import make_git

    model = make_git(tmp_path / "git")
    common = ["--model_id", model, "--max_length", 12, "--batch_size", 3, "--device", "cpu", "--no_progress",
              "--remove_words"]
    assert run("make_captions_by_git", [photos[0].parent] + common + ["--output_dir", tmp_path / "single",
                                                                      "--max_data_loader_n_workers", 0]) == 0
    single = captions(tmp_path / "single", ".caption")
    shard = make_shard(tmp_path / "shard.tar", {p.name: p.read_bytes() for p in photos})
    out = tmp_path / "captions.parquet"
    capsys.readouterr()
    assert run("make_captions_by_git", [shard] + common + ["--ray", "--ray_output", out]) == 0
    assert summary_line(capsys.readouterr().out).startswith("captioned 4, skipped 0, failed 0")
    rows = read_table(out)
    assert {name: row["caption"] + "\n" for name, row in rows.items()} == single
    assert pq.read_schema(out).names == ["image_path", "caption", "image_size", "scores", "error"]


def test_dual_caption_local_folder_matches_single_machine_and_skips_done(cluster, tmp_path, capsys):
    from tests.fixtures.llava_model import make_llava_model

    model = make_llava_model(tmp_path / "joycaption")
    data = tmp_path / "data"
    real_photos(data, n=2)
    (data / "text.png").write_text("not an image", encoding="utf-8")
    common = [data, "--model", model, "--greedy", "--tags-max-new-tokens", 8, "--desc-max-new-tokens", 8,
              "--max-retries", 0, "--device", "cpu", "--num-workers", 0, "--no-progress"]
    assert run("dual_caption", common + ["--output-dir", tmp_path / "single"]) == 0
    capsys.readouterr()
    assert run("dual_caption", common + ["--output-dir", tmp_path / "ray", "--ray"]) == 0
    assert summary_line(capsys.readouterr().out).startswith("captioned 2, skipped 0, failed 1")
    single = captions(tmp_path / "single", ".txt")
    assert len(single) == 2 and all(len(v.splitlines()) == 2 for v in single.values())
    assert captions(tmp_path / "ray", ".txt") == single
    assert run("dual_caption", common + ["--output-dir", tmp_path / "ray", "--ray"]) == 3  # all it tried failed
    assert summary_line(capsys.readouterr().out).startswith("captioned 0, skipped 2, failed 1")


def test_a_script_process_joins_the_cluster_by_address(cluster, model_dir, photos, tagger_reference, tmp_path):
    """The real command line: a new driver process, relative paths, another `library` on PYTHONPATH."""
    data = tmp_path / "data"
    data.mkdir()
    for p in photos[:2]:
        (data / p.name).write_bytes(p.read_bytes())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(foreign_library(tmp_path)),
           "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "data", "--repo_id", "org/tiny", "--model_dir",
                           str(model_dir), "--batch_size", "2", "--ray", "--ray_address", cluster, "--no_progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tagged 2, skipped 0, failed 0" in proc.stdout
    for p in photos[:2]:
        assert (data / (p.stem + ".txt")).read_text(encoding="utf-8") == tagger_reference[p.stem]


def test_vlm_sampled_captions_on_ray_match_single_machine(cluster, tmp_path, capsys):
    from tests.fixtures.vlm_qwen25vl import make_qwen25vl

    model = make_qwen25vl(tmp_path / "qwen")
    data = tmp_path / "data"
    photos = real_photos(data, n=3)
    (data / f"{photos[0].stem}.tags").write_text("outdoors, tree", encoding="utf-8")
    common = [data, "--model", model, "--seed", 11, "--tags_from", ".tags", "--prompt", "Describe: {tags}",
              "--temperature", 1.0, "--max-new-tokens", 8, "--device", "cpu",
              "--num-workers", 0, "--no-progress"]
    assert run("make_captions_by_vlm", common + ["--output-dir", tmp_path / "single", "--batch-size", 3]) == 0
    capsys.readouterr()
    assert run("make_captions_by_vlm", common + ["--output-dir", tmp_path / "ray", "--ray", "--batch-size", 1]) == 0
    assert "2 images had no .tags tag file" in capsys.readouterr().out  # counted on the Ray workers too
    single = captions(tmp_path / "single", ".txt")
    assert len(single) == 3 and captions(tmp_path / "ray", ".txt") == single  # per-image seeds: batch/worker free
