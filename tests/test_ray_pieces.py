"""--ray without a cluster: the install hint when Ray is missing, the flags, input kinds, result files, resume."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import pytest

from finetune import cli
from library.errors import FatalError
from tests.conftest import SCRIPT
from tests.fixtures.images import real_photos

pytestmark = pytest.mark.timeout(60)
SCRIPTS = ("tag_images_by_wd14_tagger", "make_captions", "make_captions_by_git", "dual_caption")


def test_without_ray_the_scripts_exit_1_with_the_install_command(tmp_path):
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    real_photos(tmp_path / "data", n=1)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "data"), "--ray", "--repo_id", "org/none"],
                          cwd=tmp_path, env={"PYTHONPATH": str(fake.parent), "HF_HUB_OFFLINE": "1",
                                             "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        'error: --ray needs Ray Data, which is not installed: pip install "ray[data]"'
    assert not list((tmp_path / "data").glob("*.txt"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_takes_the_ray_flags(name):
    import importlib

    module = importlib.import_module(f"finetune.{name}")
    args = module.setup_parser().parse_args(["data", "--ray", "--ray_address", "auto", "--ray_actors", "2",
                                             "--ray_gpus_per_actor", "0.5", "--ray_cpus_per_actor", "2",
                                             "--ray_output", "out.parquet"])
    assert (args.ray, args.ray_address, args.ray_actors, args.ray_gpus_per_actor, args.ray_cpus_per_actor,
            args.ray_output) == (True, "auto", 2, 0.5, 2.0, "out.parquet")
    plain = module.setup_parser().parse_args(["data", "--ray_output", "out.parquet"])
    with pytest.raises(FatalError, match="--ray_output needs --ray"):
        cli.ray_options(plain)
    assert cli.ray_options(module.setup_parser().parse_args(["data"])) is None


@pytest.fixture()
def pyarrow():
    return pytest.importorskip("pyarrow", reason='comes with the optional ray[data] extra')


def test_input_kinds_are_detected(pyarrow, tmp_path, caplog):
    import pyarrow.parquet as pq

    from library.distributed.inputs import detect_input

    mixed = tmp_path / "mixed"
    real_photos(mixed, n=1)
    with tarfile.open(mixed / "shard.tar", "w"):
        pass
    assert detect_input(mixed).kind == "folder"
    assert "holds images and 1 .tar files" in caplog.text
    shards = tmp_path / "shards"
    (shards / "sub").mkdir(parents=True)
    for name in ("b.tar", "a.tar", "sub/c.tar", ".hidden.tar"):
        (shards / name).write_bytes(b"")
    assert [p.name for p in detect_input(shards).files] == ["a.tar", "b.tar"]
    assert [p.name for p in detect_input(shards, recursive=True).files] == ["a.tar", "b.tar", "c.tar"]
    pq.write_table(pyarrow.table({"file": ["x.png"]}), tmp_path / "t.parquet")
    with pytest.raises(FatalError, match="needs a column of image paths named image_path or path"):
        detect_input(tmp_path / "t.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FatalError, match="no images found"):
        detect_input(tmp_path / "empty")


def rows(*specs):
    return [{"image_path": k, "caption": c, "image_size": [4, 3] if c else None, "scores": None,
             "error": None if c else "broken"} for k, c in specs]


def test_a_folder_output_keeps_one_row_per_image_across_reruns(pyarrow, tmp_path):
    from library.outputs.table import TableOutput, read_rows

    out = tmp_path / "out"
    first = TableOutput(out, resume=True)
    for row in rows(("/d/a.png", "a cat"), ("/d/b.png", None), ("/d/c.png", "a dog")):
        first.add(row)
    first.close()
    assert len(list(out.glob("part-*.parquet"))) == 1

    second = TableOutput(out, resume=True)
    assert second.done_keys() == {"/d/a.png", "/d/c.png"}  # b failed: it is tried again
    second.run_id += "-second"
    second.add(rows(("/d/b.png", "a bird"))[0])
    second.close()
    every = [r for f in sorted(out.glob("*.parquet")) for r in read_rows(f)]
    assert sorted((r["image_path"], r["caption"]) for r in every) == [
        ("/d/a.png", "a cat"), ("/d/b.png", "a bird"), ("/d/c.png", "a dog")]


def test_a_single_file_output_is_rewritten_with_earlier_rows_when_resuming(pyarrow, tmp_path):
    from library.outputs.table import TableOutput, read_rows

    for name in ("out.jsonl", "out.parquet"):
        target = tmp_path / name
        first = TableOutput(target, resume=False)
        for row in rows(("k1", "one"), ("k2", None)):
            first.add(row)
        first.close()
        again = TableOutput(target, resume=True)
        assert again.done_keys() == {"k1"}
        again.add(rows(("k2", "two"))[0])
        again.close()
        assert [(r["image_path"], r["caption"], r["error"]) for r in read_rows(target)] == [
            ("k1", "one", None), ("k2", "two", None)]
        fresh = TableOutput(target, resume=False)
        fresh.add(rows(("k3", "three"))[0])
        fresh.close()
        assert [r["image_path"] for r in read_rows(target)] == ["k3"]
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        TableOutput(tmp_path / "dir.parquet", resume=False)
    (tmp_path / "results").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        TableOutput(tmp_path / "results", resume=False)


def test_tar_rows_skip_done_members_and_report_a_damaged_shard(tmp_path):
    import io

    from library.distributed.inputs import tar_rows

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        for name in ("1.png", "1.txt", "2.JPG", "._3.png", "4.webp"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    blocks = list(tar_rows(str(shard), frozenset({f"{shard}/4.webp"}), rows_per_block=1))
    assert [[r["key"] for r in b] for b in blocks] == [[f"{shard}/1.png"], [f"{shard}/2.JPG"]]
    assert all(r["shard_size"] == 2 and r["data"] == b"abc" and r["error"] is None for b in blocks for r in b)
    (tmp_path / "bad.tar").write_bytes(shard.read_bytes()[:700])
    [[row]] = list(tar_rows(str(tmp_path / "bad.tar"), frozenset()))
    assert row["shard_size"] == 1 and row["error"].startswith("cannot read the shard")


def test_a_dead_recorded_cluster_means_starting_a_local_one(monkeypatch):
    pytest.importorskip("ray", reason='Ray Data is an optional extra (pip install "ray[data]")')
    import ray._private.utils

    from library.distributed.runner import _local_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda temp_dir=None: "127.0.0.1:1")
    assert _local_address() == "local"  # nothing listens there: ray.init would wait minutes for it
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda temp_dir=None: None)
    assert _local_address() == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert _local_address() is None  # ray.init follows RAY_ADDRESS itself
