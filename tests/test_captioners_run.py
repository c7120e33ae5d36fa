"""Caption runs through the scripts: seeds, resume, output folders, batching, bad images and OOM fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune import cli
from library.captioners.blip import BlipCaptioner
from library.captioners.job import CaptionRunConfig, caption_images
from library.files.sidecars import one_line
from library.captioners.hf_models import GenerationSettings
from tests.fixtures.captioner_models import make_blip, make_blip2_opt, make_blip2_t5
from tests.fixtures.images import awkward_images, bad_images, real_photos

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_models")
    return {"blip": make_blip(root / "blip"), "opt": make_blip2_opt(root / "opt"), "t5": make_blip2_t5(root / "t5")}


def make_captions(argv) -> int:
    """Run finetune/make_captions.py in this process (the subprocess path is covered in test_captioners_blip)."""
    from finetune import make_captions

    return cli.run_script(make_captions.main, make_captions.setup_parser(), argv=[str(a) for a in argv])


def read_all(folder: Path, ext: str) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*" + ext))}


def test_same_seed_same_captions_under_sampling(models, tmp_path):
    data = tmp_path / "data"
    real_photos(data, n=4)
    common = [data, "--model_id", models["opt"], "--max_data_loader_n_workers", "0", "--batch_size", "2",
              "--max_length", "20", "--top_p", "0.9"]
    runs = []
    for seed, ext in [(42, ".a"), (42, ".b"), (7, ".c")]:
        assert make_captions(common + ["--seed", seed, "--caption_extension", ext]) == 0
        runs.append({k.rsplit(".", 1)[0]: v for k, v in read_all(data, ext).items()})
    assert len(runs[0]) == 4
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # sampling really samples: another seed, other captions


def test_batched_script_run_equals_one_at_a_time_with_beam_search(models, tmp_path):
    data = tmp_path / "data"
    real_photos(data, n=5)
    common = [data, "--model_id", models["t5"], "--max_data_loader_n_workers", "0", "--beam_search",
              "--num_beams", "3", "--max_length", "12", "--dtype", "fp32", "--device", "cpu"]
    assert make_captions(common + ["--batch_size", "4", "--caption_extension", ".b4"]) == 0
    assert make_captions(common + ["--batch_size", "1", "--caption_extension", ".b1"]) == 0
    batched = {k[:-3]: v for k, v in read_all(data, ".b4").items()}
    single = {k[:-3]: v for k, v in read_all(data, ".b1").items()}
    assert len(batched) == 5 and batched == single


def test_bad_images_are_reported_and_skipped_with_exit_0(models, tmp_path, capsys):
    data = tmp_path / "data"
    awkward = awkward_images(data)
    broken = bad_images(data)
    rc = make_captions([data, "--model_id", models["blip"], "--recursive", "--batch_size", "3", "--beam_search",
                        "--max_length", "10", "--max_data_loader_n_workers", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    for kind in ("zero_bytes", "truncated_jpeg", "truncated_png", "text_as_png", "decompression_bomb"):
        assert f"failed: {broken[kind]}" in out
        assert not broken[kind].with_suffix(".caption").exists()
    assert "failed 5" in out
    for kind in ("rgba", "cmyk_jpeg", "gray16_png", "tiny", "wide", "animated_gif", "unicode_spaced", "nested"):
        assert awkward[kind].with_suffix(".caption").read_text(encoding="utf-8").strip(), kind
    assert not (data / ".hidden.caption").exists() and not (data / "._photo.caption").exists()


def test_skip_existing_resumes_and_output_dir_mirrors_the_tree(models, tmp_path, capsys):
    data = tmp_path / "data"
    real_photos(data, n=3)
    real_photos(data / "sub" / "deeper", n=2)
    out_dir = tmp_path / "captions"
    common = [data, "--model_id", models["blip"], "--recursive", "--output_dir", out_dir, "--beam_search",
              "--max_length", "10", "--max_data_loader_n_workers", "0", "--caption_extension", "txt"]
    assert make_captions(common) == 0
    first = read_all(out_dir, ".txt")
    assert sorted(first) == ["astronaut.txt", "chelsea.txt", "coffee.txt", "sub/deeper/astronaut.txt",
                             "sub/deeper/coffee.txt"]
    assert not list(data.rglob("*.txt"))  # the dataset folder is left untouched
    (out_dir / "chelsea.txt").unlink()
    (out_dir / "sub" / "deeper" / "coffee.txt").write_text("my own edit\n", encoding="utf-8")
    capsys.readouterr()
    assert make_captions(common + ["--skip_existing"]) == 0
    assert "captioned 1, skipped 4, failed 0" in capsys.readouterr().out
    again = read_all(out_dir, ".txt")
    assert again["chelsea.txt"] == first["chelsea.txt"]
    assert again["sub/deeper/coffee.txt"] == "my own edit\n"
    assert make_captions(common + ["--skip_existing"]) == 0  # nothing left: the model is not even loaded
    assert "captioned 0, skipped 5, failed 0" in capsys.readouterr().out


class _OutOfMemoryOnBatches(BlipCaptioner):
    """Fault injection: a batch of more than one image raises torch's OutOfMemoryError, as a full GPU would."""

    def generate(self, batch):
        import torch

        if len(batch) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().generate(batch)


def test_out_of_memory_batch_falls_back_to_one_image_at_a_time(models, tmp_path):
    data = tmp_path / "data"
    photos = real_photos(data, n=4)
    settings = GenerationSettings(sample=False, num_beams=2, max_length=10)
    cfg = CaptionRunConfig(train_data_dir=data, batch_size=4, workers=0, progress=False)
    summary = caption_images(lambda: _OutOfMemoryOnBatches(str(models["blip"]), settings, device="cpu"), cfg)
    assert summary.done == 4 and summary.failed == 0
    plain = BlipCaptioner(str(models["blip"]), GenerationSettings(sample=False, num_beams=2, max_length=10),
                          device="cpu")
    for p in photos:
        assert p.with_suffix(".caption").read_text(encoding="utf-8").strip() == \
            plain.generate([plain.preprocess(p)[0]])[0]


def test_an_empty_caption_is_a_failure_not_an_empty_file(models, tmp_path):
    """An empty sidecar would look 'done' to --skip_existing; the image is reported instead."""
    data = tmp_path / "data"
    real_photos(data, n=2)
    settings = GenerationSettings(sample=False, max_length=8)
    cfg = CaptionRunConfig(train_data_dir=data, workers=0, progress=False, postprocess=lambda c: " \n ")
    summary = caption_images(lambda: BlipCaptioner(str(models["blip"]), settings, device="cpu"), cfg)
    assert summary.done == 0 and [r for _, r in summary.failures] == ["the model produced an empty caption"] * 2
    assert not list(data.glob("*.caption"))


def test_clean_caption_makes_one_tidy_line():
    assert one_line("  a dog\n on  the\tbeach \n") == "a dog on the beach"
    assert one_line(" \n ") == ""
