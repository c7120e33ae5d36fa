"""OptionError: raised where an option is validated, a FatalError (one-line 'error: ...', exit 1) and a ValueError."""

import pytest

from finetune import caption_tools, cli, dataset_report, resize_images
from library.dataset.buckets import BucketPlanner, BucketSettings, as_resolution, default_bucket_settings
from library.dataset.caption_edit import CaptionEdit
from library.errors import FatalError, OptionError
from library.outputs.table import TableOutput
from library.files.sidecars import normalize_extension
from library.taggers.tag_rules import parse_tag_replacement
from tests.fixtures.datasets import make_image, write_sidecar

pytestmark = pytest.mark.timeout(60)


def test_option_error_is_fatal_and_a_value_error():
    assert issubclass(OptionError, FatalError) and issubclass(OptionError, ValueError)


@pytest.mark.parametrize("call,message", [
    (lambda: as_resolution("twelve"), "resolution must be one or two whole numbers"),
    (lambda: as_resolution([0, 5]), "resolution must be positive"),
    (lambda: BucketPlanner(BucketSettings((512, 512), True, 768, 1024, 64)), "min_bucket_reso 768 is larger"),
    (lambda: BucketPlanner(BucketSettings((512, 512), True, 256, 1024, 0)), "bucket_reso_steps must be at least 1"),
    (lambda: default_bucket_settings({"resolution": True}), "resolution must be an integer"),
    (lambda: CaptionEdit("prefix"), "prefix needs at least one tag"),
    (lambda: normalize_extension(" . "), "caption extension must not be empty"),
    (lambda: parse_tag_replacement("a;b"), "--tag_replacement: expected 'source,target' pairs"),
])
def test_validators_raise_option_errors(call, message):
    with pytest.raises(OptionError, match=message):
        call()


def test_ray_output_kind_is_validated(tmp_path):
    (tmp_path / "out.parquet").mkdir()
    with pytest.raises(OptionError, match="is a folder"):
        TableOutput(tmp_path / "out.parquet", resume=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match="is a file"):
        TableOutput(tmp_path / "file", resume=False)


def run(module, argv, capsys) -> tuple[int, str]:
    code = cli.run_script(module.main, module.setup_parser(), argv=[str(a) for a in argv])
    return code, capsys.readouterr().err


def test_scripts_print_one_line_for_a_bad_option(tmp_path, capsys):
    write_sidecar(make_image(tmp_path / "data" / "a.png", 32, 32), "1girl, solo")
    code, err = run(resize_images, [tmp_path / "data", tmp_path / "out", "--resolution", "512",
                                    "--min_bucket_reso", "768", "--no_progress"], capsys)
    assert (code, err.strip()) == (1, "error: min_bucket_reso 768 is larger than the resolution's short side 512; "
                                      "sd-scripts refuses that")
    assert not (tmp_path / "out").exists()
    code, err = run(caption_tools, ["sort", tmp_path / "data", "--caption_extension", "."], capsys)
    assert (code, err.strip()) == (1, "error: caption extension must not be empty (e.g. .txt or .caption)")
    with pytest.raises(SystemExit) as stop:  # refused while parsing, as every malformed value is
        run(caption_tools, ["prefix", tmp_path / "data", "x", "--separator", ""], capsys)
    assert stop.value.code == 2 and "argument --caption_separator/--separator: must not be empty" in \
        capsys.readouterr().err
    code, err = run(dataset_report, [], capsys)
    assert (code, err.strip()) == (1, "error: give a folder or --dataset_config PATH.toml")
