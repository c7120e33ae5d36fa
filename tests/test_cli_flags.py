"""One flag style: every option of every script parses as --snake_case and as --dash-case, abbreviations still work."""

import argparse
import importlib

import pytest

from finetune import cli

pytestmark = pytest.mark.timeout(120)

# script -> the arguments it needs besides the option under test (positionals, required options)
SCRIPTS = {
    "tag_images_by_wd14_tagger": ["data"],
    "make_captions": ["data"],
    "make_captions_by_git": ["data"],
    "dual_caption": ["data"],
    "make_dataset_config": ["data", "--out", "ds.toml"],
    "caption_report": ["data"],
    "dataset_report": ["data"],
    "merge_captions_to_metadata": ["data", "meta.json"],
    "merge_dd_tags_to_metadata": ["data", "meta.json"],
    "resize_images": ["data", "out"],
    "retag_from_scores": ["scores.jsonl"],
}
CAPTION_TOOLS = {"prefix": ["prefix", "data", "ohwx"], "suffix": ["suffix", "data", "x"], "remove": ["remove", "data", "x"],
                 "replace": ["replace", "data", "a", "b"], "dedupe": ["dedupe", "data"], "sort": ["sort", "data"],
                 "shorten": ["shorten", "data"], "common": ["common", "data"], "prune": ["prune", "data"]}
CAPTIONING = ("tag_images_by_wd14_tagger", "make_captions", "make_captions_by_git", "dual_caption")
CANDIDATE_VALUES = ("1", "0.5", "512", "x.json")


def parser_of(script: str) -> cli.ArgumentParser:
    return importlib.import_module(f"finetune.{script}").setup_parser()


def parsers():
    """(id, parser, base argv) for every script, caption_tools' subcommands one by one."""
    for script, base in SCRIPTS.items():
        yield script, parser_of(script), base
    tools = parser_of("caption_tools")
    sub_action = next(a for a in tools._actions if isinstance(a, argparse._SubParsersAction))
    for name, base in CAPTION_TOOLS.items():
        yield f"caption_tools {name}", sub_action.choices[name], base[1:]


def other_spelling(option: str) -> str:
    body = option[2:]
    prefix = "no-" if body.startswith("no-") else ""
    rest = body[len(prefix):]
    dashed, snaked = rest.replace("_", "-"), rest.replace("-", "_")
    return f"--{prefix}{dashed if dashed != rest else snaked}"


def option_cases():
    for ident, parser, base in parsers():
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and other_spelling(option) != option:
                    yield pytest.param(parser, base, action, option, id=f"{ident} {option}")


def values_for(parser: argparse.ArgumentParser, base: list[str], action: argparse.Action, option: str) -> list[str]:
    """Arguments after `option` that the parser accepts and that change the parse (none for flags)."""
    if action.nargs == 0:
        return []
    untouched = parser.parse_args(base)
    for value in [str(c) for c in action.choices or ()] or CANDIDATE_VALUES:
        try:
            if parser.parse_args([*base, option, value]) != untouched:
                return [value]
        except SystemExit:
            continue
    raise AssertionError(f"no value found that {option} accepts")


def outcome(parser: argparse.ArgumentParser, argv: list[str], capsys):
    """The namespace, or for options that print and exit (such as --list_models) the exit code and the output."""
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code, capsys.readouterr().out


@pytest.mark.parametrize("parser,base,action,option", list(option_cases()))
def test_every_option_parses_in_both_spellings(parser, base, action, option, capsys):
    values = values_for(parser, base, action, option)
    canonical = outcome(parser, [*base, option, *values], capsys)
    twin = other_spelling(option)
    assert outcome(parser, [*base, twin, *values], capsys) == canonical, twin
    assert canonical != parser.parse_args(base), option  # the option reached its destination


def test_every_script_uses_the_shared_parser():
    for ident, parser, _ in parsers():
        assert isinstance(parser, cli.ArgumentParser), ident
        assert parser.allow_abbrev, ident  # sd-scripts users shorten flags
        assert cli.SPELLING_NOTE in parser.format_help(), ident


def test_abbreviations_still_work_in_either_spelling():
    tagger = parser_of("tag_images_by_wd14_tagger")
    args = tagger.parse_args(["data", "--batch", "4", "--remove_under", "--caption-sep", " | ", "--recur"])
    assert (args.batch_size, args.remove_underscore, args.caption_separator, args.recursive) == (4, True, " | ", True)
    for script in ("make_captions", "make_captions_by_git"):  # --model is short for --model_id, not ambiguous
        assert parser_of(script).parse_args(["data", "--model", "org/m"]).model_id == "org/m", script
        assert parser_of(script).parse_args(["data", "--model=org/m"]).model_id == "org/m", script
    assert parser_of("dual_caption").parse_args(["data", "--model", "m"]).model == "m"
    report = parser_of("caption_report")
    args = report.parse_args(["data", "--no-enable", "--bucket-no-up", "--thumb", "64"])
    assert (args.enable_bucket, args.bucket_no_upscale, args.thumb_size) == (False, True, 64)
    assert report.parse_args(["data", "--enable-bucket", "--no-bucket-no-upscale"]).bucket_no_upscale is False


def test_a_really_ambiguous_prefix_is_still_refused(capsys):
    with pytest.raises(SystemExit):
        parser_of("tag_images_by_wd14_tagger").parse_args(["data", "--use-rating"])
    err = capsys.readouterr().err
    assert "ambiguous option: --use-rating could match --use_rating_tags, --use_rating_tags_as_last_tag" in err


def test_dual_caption_keeps_its_dashed_names():
    args = parser_of("dual_caption").parse_args(
        ["data", "--batch-size", "2", "--top-p", "0.5", "--num-workers", "0", "--desc-type", "Descriptive",
         "--tags-extra-option", "1", "--tags-extra-option", "2", "--no-progress", "--max_data_loader_n_workers", "3",
         "--api-base", "http://127.0.0.1:1/v1"])
    assert (args.batch_size, args.top_p, args.num_workers, args.desc_type, args.tags_extra_option, args.no_progress,
            args.api_base) == (2, 0.5, 3, "Descriptive", ["1", "2"], True, "http://127.0.0.1:1/v1")


def test_a_twin_that_is_another_option_is_a_programming_error():
    parser = cli.ArgumentParser()
    parser.add_argument("--batch_size")
    parser.add_argument("--batch-size", dest="other")
    with pytest.raises(ValueError, match="--batch-size is both"):
        parser.parse_args([])


@pytest.mark.parametrize("script,skips", [("tag_images_by_wd14_tagger", False), ("make_captions", False),
                                          ("make_captions_by_git", False), ("dual_caption", True)])
def test_skip_existing_and_overwrite_on_every_captioning_script(script, skips, capsys):
    parser = parser_of(script)
    assert cli.resume_flag(parser.parse_args(["data"]), skips) is skips
    assert cli.resume_flag(parser.parse_args(["data", "--skip_existing"]), skips) is True
    assert cli.resume_flag(parser.parse_args(["data", "--overwrite"]), skips) is False
    assert cli.resume_flag(parser.parse_args(["data", "--skip-existing"]), skips) is True
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "--skip_existing", "--overwrite"])
    assert "not allowed with argument" in capsys.readouterr().err
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.dest in ("skip_existing", "overwrite")}
    default_flag, other_flag = ("--skip_existing", "--overwrite") if skips else ("--overwrite", "--skip_existing")
    assert "(default)" in helps[default_flag] and "(default)" not in helps[other_flag]


def test_report_is_an_html_path_everywhere_and_separator_kept_as_alias():
    for script in CAPTIONING:
        assert parser_of(script).parse_args(["data", "--report", "r.html"]).report == "r.html"
    config = parser_of("make_dataset_config")
    assert config.parse_args(SCRIPTS["make_dataset_config"] + ["--bucket_report"]).bucket_report is True
    assert not any("--report" in a.option_strings for a in config._actions)
    tools = parser_of("caption_tools")
    for flag in ("--caption_separator", "--caption-separator", "--separator"):
        assert tools.parse_args(["sort", "data", flag, " | "]).caption_separator == " | ", flag
