"""make_captions_by_vlm.py with tiny random VLMs in the real repos' layouts: fidelity to the model cards' code per family,
batch and order invariance, seeded sampling, {tags} from tag files, the API backend, and clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from finetune import cli  # noqa: E402
from finetune.make_captions_by_vlm import main, setup_parser  # noqa: E402
from library.captioners.vlm import RgbLoader, conversation  # noqa: E402
from library.captioners.vlm_families import FAMILIES, describe_families, family_for  # noqa: E402
from library.joycaption.prompt_tags import fill_tags, TAGS_SENTENCE  # noqa: E402
from library.files.sidecars import one_line  # noqa: E402
from tests.fixtures.datasets import make_image, write_sidecar  # noqa: E402
from tests.fixtures.dual_caption_server import chat_server, expected_caption  # noqa: E402
from tests.fixtures.vlm_models import BUILDERS, builder, reference_captioner  # noqa: E402

pytestmark = pytest.mark.timeout(300)
SIZES = [(64, 48), (40, 72), (90, 90), (33, 57)]
MAX_NEW = 12


def run(argv: list[str]) -> int:
    return cli.run_script(main, setup_parser(), argv=[str(a) for a in argv])


def base_args(folder, model, *extra) -> list:
    return [folder, "--model", model, "--device", "cpu", "--num_workers", "0", "--no_progress",
            "--max_new_tokens", MAX_NEW, *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vlm-images")
    for i, (w, h) in enumerate(SIZES):
        make_image(folder / f"img{i}.png", w, h, seed=i)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """family -> model folder, built once per test module."""
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            make = builder(family)
            if make is None:
                pytest.skip(f"no tiny {family} stand-in in tests/fixtures")
            cache[family] = make(tmp_path_factory.mktemp(family))
        return cache[family]
    return get


def captions(folder: Path, extension: str = ".txt", images: Path | None = None) -> dict[str, str | None]:
    """image name -> its caption file's text (None: no file); images from `images` (default: folder itself)."""
    out = {}
    for image in sorted((images or folder).glob("*.png")):
        side = folder / (image.stem + extension)
        out[image.name] = side.read_text(encoding="utf-8").rstrip("\n") if side.exists() else None
    return out


def prompt_for(folder: Path) -> str:
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    family = family_for(model_type)
    return family.default_prompt if family.uses_task_tokens else "Describe this image."


@pytest.mark.parametrize("family", list(BUILDERS))
def test_greedy_captions_equal_the_model_cards_code_for_every_batch_size(family, built, dataset, tmp_path):
    model = built(family)
    prompt = prompt_for(model)
    reference = reference_captioner(model)
    expected = {}
    for image in sorted(dataset.glob("*.png")):
        text = one_line(reference(Image.open(image).convert("RGB"), prompt, MAX_NEW))
        expected[image.name] = text or None  # an empty caption is a failure: no file
    assert len({t for t in expected.values() if t}) >= 2, f"{family}: the stand-in gives the same caption for all"
    outs = {}
    for batch in (1, 3):
        out = tmp_path / f"batch{batch}"
        code = run(base_args(dataset, model, "--greedy", "--prompt", prompt, "--batch_size", batch,
                             "--output_dir", out))
        assert code == cli.EXIT_OK
        outs[batch] = captions(out, images=dataset)
    assert outs[1] == expected
    assert outs[3] == expected


def test_system_prompt_is_a_system_turn_before_the_user_turn(built, dataset, tmp_path):
    model = built("qwen2.5-vl")
    reference = reference_captioner(model)
    system = "You caption images for a text-to-image dataset."
    assert run(base_args(dataset, model, "--greedy", "--prompt", "Describe.", "--system_prompt", system,
                         "--batch_size", 4, "--output_dir", tmp_path)) == cli.EXIT_OK
    got = captions(tmp_path, images=dataset)
    for image in sorted(dataset.glob("*.png")):
        assert got[image.name] == one_line(reference(Image.open(image).convert("RGB"), "Describe.", MAX_NEW, system))
    assert conversation("P") == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "P"}]}]
    assert conversation("P", "S")[0] == {"role": "system", "content": [{"type": "text", "text": "S"}]}


@pytest.mark.parametrize("family", ["qwen2.5-vl", "joycaption", "florence2"])
def test_seeded_sampling_does_not_depend_on_batch_order_or_resume(family, built, dataset, tmp_path):
    model = built(family)
    sample = ["--seed", 5, "--temperature", 1.0, "--top_p", 0.95, "--prompt", prompt_for(model)]
    runs = {}
    for batch in (1, 4):
        out = tmp_path / f"b{batch}"
        assert run(base_args(dataset, model, *sample, "--batch_size", batch, "--output_dir", out)) == cli.EXIT_OK
        runs[batch] = captions(out, images=dataset)
    assert runs[1] == runs[4]
    greedy = tmp_path / "greedy"
    assert run(base_args(dataset, model, "--greedy", "--prompt", prompt_for(model), "--batch_size", 4,
                         "--output_dir", greedy)) == cli.EXIT_OK
    assert captions(greedy, images=dataset) != runs[4], "sampling gave the greedy captions"
    other = tmp_path / "seed6"
    assert run(base_args(dataset, model, *sample[2:], "--seed", 6, "--batch_size", 4, "--output_dir", other)) == 0
    assert captions(other, images=dataset) != runs[4], "another seed gave the same captions"
    # a resumed run captions only the missing image, and gets the same text for it
    (tmp_path / "b4" / "img2.txt").unlink()
    assert run(base_args(dataset, model, *sample, "--batch_size", 3, "--skip_existing", "--output_dir",
                         tmp_path / "b4")) == cli.EXIT_OK
    assert captions(tmp_path / "b4", images=dataset) == runs[1]


def test_tags_from_fills_the_prompt_and_counts_images_without_tags(built, dataset, tmp_path, capsys):
    model = built("qwen2.5-vl")
    folder = tmp_path / "ds"
    folder.mkdir()
    for image in dataset.glob("*.png"):
        (folder / image.name).write_bytes(image.read_bytes())
    write_sidecar(folder / "img0.png", "1girl, red hair, smile")
    write_sidecar(folder / "img1.png", "landscape, mountain")
    prompt = "Describe this image. Use these tags where they fit: {tags}"
    assert run(base_args(folder, model, "--greedy", "--prompt", prompt, "--tags_from", ".txt",
                         "--caption_extension", ".caption", "--batch_size", 4)) == cli.EXIT_OK
    assert "2 images had no .txt tag file" in capsys.readouterr().out
    reference = reference_captioner(model)
    got = captions(folder, ".caption")
    tags = {"img0.png": "1girl, red hair, smile", "img1.png": "landscape, mountain"}
    for image in sorted(folder.glob("*.png")):
        filled = prompt.replace("{tags}", tags.get(image.name, ""))
        assert got[image.name] == one_line(reference(Image.open(image).convert("RGB"), filled, MAX_NEW))
    assert (folder / "img0.txt").read_text(encoding="utf-8").startswith("1girl, red hair")  # tags untouched
    # {tags} without --tags_from would reach the model as it is: refused
    assert run(base_args(folder, model, "--prompt", prompt, "--caption_extension", ".caption")) == cli.EXIT_FATAL
    assert "no --tags_from" in capsys.readouterr().err
    # the captions would replace the tags they come from: refused before anything runs
    code = run(base_args(folder, model, "--prompt", prompt, "--tags_from", ".txt", "--overwrite"))
    assert code != cli.EXIT_OK and "would replace the tags" in capsys.readouterr().err
    # a tag file that is not UTF-8 fails that image alone, naming the file
    (folder / "img2.txt").write_bytes(b"\xff\xfe bad")
    assert run(base_args(folder, model, "--greedy", "--prompt", prompt, "--tags_from", ".txt",
                         "--caption_extension", ".caption", "--overwrite")) == cli.EXIT_OK  # the others are written
    err = capsys.readouterr()
    assert "img2.txt" in err.out + err.err and "not UTF-8" in err.out + err.err


def test_fill_tags_and_the_dual_caption_sentence():
    assert fill_tags("Tags: {tags}. Go", "a, b") == "Tags: a, b. Go"
    assert fill_tags("Write a caption. " + TAGS_SENTENCE, "") == "Write a caption."
    assert fill_tags("Write a caption. " + TAGS_SENTENCE, "x, y") == "Write a caption. Use these tags where they fit: x, y."
    assert fill_tags("{name} stays", "t") == "{name} stays"


def test_api_backend_sends_the_prompt_contract_and_per_image_seeds(dataset, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    for image in dataset.glob("*.png"):
        (folder / image.name).write_bytes(image.read_bytes())
    write_sidecar(folder / "img0.png", "cat, sofa")
    served = "Qwen/Qwen2.5-VL-7B-Instruct"
    prompt = "Caption this. Tags: {tags}"
    seeds = {}
    for batch in (1, 4):
        with chat_server(image_size=None, model=served, system_turn=False) as server:
            assert run([folder, "--api_base", server.url, "--api_backoff", "0.02", "--num_workers", "0",
                        "--no_progress", "--prompt", prompt, "--tags_from", ".txt", "--caption_extension", ".caption",
                        "--batch_size", batch, "--seed", 3, "--overwrite"]) == cli.EXIT_OK
            assert not server.errors, server.errors
            bodies = server.requests
        texts = sorted(b["messages"][0]["content"][1]["text"] for b in bodies)
        assert texts == sorted(["Caption this. Tags: cat, sofa"] + ["Caption this. Tags: "] * 3)
        seeds[batch] = sorted(b["seed"] for b in bodies)
        assert len(set(seeds[batch])) == 4 and all(b["model"] == served for b in bodies)
    assert seeds[1] == seeds[4]
    for image in sorted(folder.glob("*.png")):  # uploads keep the image's own size (no squashing)
        url, _ = RgbLoaderUrl(image)
        tags = "cat, sofa" if image.name == "img0.png" else ""
        text = (folder / f"{image.stem}.caption").read_text(encoding="utf-8").rstrip("\n")
        assert text == one_line(expected_caption(url, prompt.replace("{tags}", tags)))
    with chat_server(image_size=None, model=served, system_turn=True) as server:
        assert run([folder, "--api_base", server.url, "--num_workers", "0", "--no_progress", "--overwrite",
                    "--system_prompt", "Be brief.", "--caption_extension", ".caption"]) == cli.EXIT_OK
        assert not server.errors and all(b["messages"][0]["content"] == "Be brief." for b in server.requests)


def RgbLoaderUrl(image: Path):
    from library.joycaption.api import JpegDataUrlLoader

    return JpegDataUrlLoader(0)(image)


def test_dual_caption_tags_from_grounds_the_description(dataset, tmp_path):
    from finetune.dual_caption import main as dual_main, setup_parser as dual_parser

    folder = tmp_path / "ds"
    folder.mkdir()
    for image in sorted(dataset.glob("*.png"))[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    write_sidecar(folder / "img0.png", "1boy, hat")
    with chat_server() as server:
        code = cli.run_script(dual_main, dual_parser(), argv=[
            str(folder), "--api_base", server.url, "--num_workers", "0", "--no_progress", "--tags_from", ".txt",
            "--caption_extension", ".caption"])
        assert code == cli.EXIT_OK and not server.errors
        prompts = [b["messages"][1]["content"][1]["text"] for b in server.requests]
    described = [p for p in prompts if "tags where they fit" in p]
    assert len(described) == 1 and described[0].endswith("Use these tags where they fit: 1boy, hat.")
    assert not any(p.rstrip().endswith("fit: .") for p in prompts)
    with chat_server() as server:
        code = cli.run_script(dual_main, dual_parser(), argv=[
            str(folder), "--api_base", server.url, "--num_workers", "0", "--tags_from", ".txt"])
        assert code != cli.EXIT_OK and not server.requests  # .txt captions would replace the .txt tags


def test_list_models_names_families_repos_sizes_and_licences(capsys):
    assert run(["--list_models"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.strip() == describe_families().strip()
    for family in FAMILIES:
        assert family.name in out
        for repo, size, licence in family.examples:
            assert repo in out and size in out and licence in out
    assert "<MORE_DETAILED_CAPTION>" in out


def test_clear_errors_for_quantization_on_cpu_remote_code_and_missing_models(built, dataset, tmp_path, capsys):
    model = built("qwen2.5-vl")
    assert run(base_args(dataset, model, "--quantization", "8bit", "--output_dir", tmp_path / "q")) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "florence2_remote_only", "auto_map": {
        "AutoConfig": "configuration_florence2.Florence2Config"}}))
    assert run(base_args(dataset, str(remote), "--prompt", "x", "--output_dir", tmp_path / "r")) == 1
    assert "never runs a repository's own code" in capsys.readouterr().err
    assert run(base_args(dataset, str(tmp_path / "nope"), "--output_dir", tmp_path / "n")) == 1
    assert "not available" in capsys.readouterr().err
    assert not list((tmp_path).glob("*/*.txt"))


def test_rgb_loader_shrinks_only_above_max_pixels(tmp_path):
    big = make_image(tmp_path / "big.png", 400, 100, seed=1)
    array, original = RgbLoader(10_000)(big)
    assert original == (400, 100) and array.shape[2] == 3 and array.shape[0] * array.shape[1] <= 10_000
    assert abs(array.shape[1] / array.shape[0] - 4.0) < 0.1  # aspect kept
    array, _ = RgbLoader(None)(big)
    assert array.shape == (100, 400, 3)


def _skipped_by_bnb(full_name: str, patterns: list[str]) -> bool:
    """Whether bitsandbytes loading leaves this module unquantised: transformers' own matcher (5.x), else 4.x's rule."""
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:
        return any(p in full_name for p in patterns)
    return not should_convert_module(full_name, patterns)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_quantization_leaves_every_vision_module_unquantised(family, built):
    from transformers import AutoModelForImageTextToText

    from library.backends.quantization import bnb_config, skip_patterns

    folder = built(family)
    model = AutoModelForImageTextToText.from_pretrained(str(folder))
    fam = family_for(model.config.model_type)
    patterns = bnb_config("8bit", torch.bfloat16, fam.never_quantize).llm_int8_skip_modules
    assert patterns == skip_patterns(fam.never_quantize)
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    vision = [n for n in linears if any(k in n for k in ("vision", "visual", "projector", "connector", "merger"))]
    language = [n for n in linears if n not in vision and "lm_head" not in n]
    assert vision and language
    assert all(_skipped_by_bnb(n, patterns) for n in vision), [n for n in vision if not _skipped_by_bnb(n, patterns)]
    assert not any(_skipped_by_bnb(n, patterns) for n in language)  # the language model is what gets quantised


@pytest.mark.parametrize("family", ["gemma3", "joycaption", "qwen2.5-vl"])
def test_rendered_prompt_is_tokenized_without_a_second_bos(family, built):
    from library.captioners.vlm import LocalVLM

    vlm = LocalVLM(str(built(family)), device="cpu")
    images = [Image.new("RGB", (40, 30), (200, 20, 20)), Image.new("RGB", (30, 50), (20, 20, 200))]
    batch = vlm.inputs(images, ["Describe this image.", "A much longer prompt so that the rows need padding."])
    bos = vlm.tokenizer.bos_token_id
    for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        real = [t for t, m in zip(ids, mask) if m]
        assert mask[0] == 0 or mask == [1] * len(mask)  # padded on the left
        if bos is not None and family != "qwen2.5-vl":  # Qwen has no bos
            assert real.count(bos) == 1 and real[0] == bos


def test_florence_pads_right_and_takes_the_task_token_alone(built, caplog):
    from library.captioners.vlm import LocalVLM

    vlm = LocalVLM(str(built("florence2")), device="cpu")
    assert vlm.family.name == "Florence-2" and vlm.tokenizer.padding_side == "right"
    assert vlm.render("<CAPTION>") == "<CAPTION>"
    batch = vlm.inputs([Image.new("RGB", (40, 30)), Image.new("RGB", (30, 40))], ["<CAPTION>", "<MORE_DETAILED_CAPTION>"])
    masks = batch["attention_mask"].tolist()
    assert masks[0][0] == 1 and masks[0][-1] == 0  # the shorter row is padded on the right
    with caplog.at_level("WARNING"):
        vlm.render("describe it")
    assert "task token" in caplog.text


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="the file system must accept names that are not UTF-8")
def test_hostile_names_get_captions_tags_and_seeds(built, dataset, tmp_path):
    import os

    model = built("qwen2.5-vl")
    folder = tmp_path / "ds"
    folder.mkdir()
    images = sorted(dataset.glob("*.png"))
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # not UTF-8
    with open(raw, "wb") as f:
        f.write(images[0].read_bytes())
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as f:
        f.write("1girl, red hair".encode())
    html = folder / "a \"quoted\" <b>name&amp;'s.png"
    html.write_bytes(images[1].read_bytes())
    args = ["--prompt", "Describe: {tags}", "--tags_from", ".txt", "--caption_extension", ".caption", "--seed", 9,
            "--temperature", 1.0]
    assert run(base_args(folder, model, *args, "--batch_size", 2)) == cli.EXIT_OK
    first = {name: (folder / name).read_bytes() for name in os.listdir(folder) if name.endswith(".caption")}
    assert {os.fsencode(n) for n in first} == {b"caf\xe9.caption", os.fsencode(html.stem + ".caption")}
    assert all(text.strip() for text in first.values())
    assert run(base_args(folder, model, *args, "--batch_size", 1)) == cli.EXIT_OK  # the seed comes from the name
    assert {name: (folder / name).read_bytes() for name in first} == first
