"""Tag selection: every sd-scripts option, and one regression test per sd-scripts defect (DESIGN.md section 4)."""

import numpy as np
import pytest

from library.taggers.labels import TagLabels
from library.taggers.tag_rules import (TagOptions, TagSelector, mcut_threshold, parse_tag_list, parse_tag_replacement,
                                    remove_underscore)

NAMES = ["general", "sensitive", "questionable", "explicit",
         "1girl", "1boy", "long_hair", "^_^", "o_o", "solo", "red_(color)",
         "hatsune_miku_(vocaloid)", "kagamine_rin", "vocaloid"]
CATS = ["rating"] * 4 + ["general"] * 7 + ["character", "character", "character"]


def labels(order_by_confidence=False):
    return TagLabels(list(NAMES), list(CATS), order_by_confidence)


def vec(pairs):
    p = np.zeros(len(NAMES), np.float32)
    for name, v in pairs.items():
        p[NAMES.index(name)] = v
    return p


ALL = {"general": .9, "sensitive": .1, "1girl": .5, "1boy": .6, "long_hair": .7, "^_^": .8, "solo": .4,
       "hatsune_miku_(vocaloid)": .9, "kagamine_rin": .8}


def select(opts=None, values=ALL, order=False):
    return TagSelector(labels(order), opts or TagOptions()).select(vec(values)).tags


def test_default_keeps_csv_order_general_then_character():
    assert select() == ["1girl", "1boy", "long_hair", "^_^", "solo", "hatsune_miku_(vocaloid)", "kagamine_rin"]


def test_character_tag_above_threshold_does_not_crash_and_is_written():
    # sd-scripts: UnboundLocalError on `character_tags` whenever a character tag passes
    assert "kagamine_rin" in select(values={"kagamine_rin": 0.99})


def test_character_tags_first_keeps_their_order():
    # sd-scripts inserts each at position 0, reversing them
    tags = select(TagOptions(character_tags_first=True))
    assert tags[:2] == ["hatsune_miku_(vocaloid)", "kagamine_rin"]


def test_always_first_tags_listed_order_wins():
    # sd-scripts moves each listed tag to the front in turn, so "1girl,1boy" gives 1boy first
    tags = select(TagOptions(always_first_tags="1girl,1boy"))
    assert tags[:2] == ["1girl", "1boy"]
    tags = select(TagOptions(always_first_tags="long_hair, 1girl"))
    assert tags[:2] == ["long_hair", "1girl"]


def test_tag_replacement_works_for_csv_layout():
    # sd-scripts: does nothing for the SmilingWolf layout
    tags = select(TagOptions(tag_replacement="1girl,one girl;long_hair,very\\,long\\;hair"))
    assert tags[:3] == ["one girl", "1boy", "very,long;hair"]


def test_tag_replacement_json_layout_replaces_only_the_source():
    # sd-scripts: every tag becomes the last target in the tag_mapping.json layout
    tags = select(TagOptions(tag_replacement="1girl,one girl;solo,alone"), order=True)
    assert "one girl" in tags and "alone" in tags and "long_hair" in tags and "1boy" in tags


def test_tag_replacement_malformed_is_an_error():
    with pytest.raises(ValueError):
        parse_tag_replacement("a,b,c")
    assert parse_tag_replacement("a\\,b,c") == [("a,b", "c")]


@pytest.mark.parametrize("separator", [" ", " | ", "; ", ", "])
def test_user_lists_work_with_any_separator(separator):
    # sd-scripts splits on separator.strip(): ValueError for " ", and a comma list is ignored for " | "
    opts = TagOptions(caption_separator=separator, undesired_tags="1boy,solo", always_first_tags="solo,1girl")
    tags = select(opts)
    assert "1boy" not in tags and "solo" not in tags and tags[0] == "1girl"


def test_undesired_tags_with_the_separator_itself():
    opts = TagOptions(caption_separator=" | ", undesired_tags="1boy | solo")
    tags = select(opts)
    assert "1boy" not in tags and "solo" not in tags


def test_character_tag_expand_with_remove_underscore_gives_two_tags_deduped_and_filterable():
    # sd-scripts yields one tag "hatsune miku, vocaloid", never deduplicated nor matched by undesired tags
    values = dict(ALL, vocaloid=0.9)
    tags = select(TagOptions(character_tag_expand=True, remove_underscore=True), values=values)
    assert "hatsune miku" in tags and tags.count("vocaloid") == 1
    assert not any("," in t for t in tags)
    tags = select(TagOptions(character_tag_expand=True, remove_underscore=True, undesired_tags="vocaloid"),
                  values=values)
    assert "hatsune miku" in tags and "vocaloid" not in tags


def test_expand_keeps_costume_parenthesis():
    sel = TagSelector(TagLabels(["kaname_madoka_(school_uniform)_(cosplay)"], ["character"]),
                      TagOptions(character_tag_expand=True))
    assert sel.select(np.array([0.9])).tags == ["kaname_madoka_(school_uniform)", "cosplay"]


def test_remove_underscore_keeps_kaomoji_and_short_tags():
    assert remove_underscore("long_hair") == "long hair"
    assert remove_underscore("^_^") == "^_^" and remove_underscore("o_o") == "o_o"
    assert remove_underscore("||_||") == "||_||" and remove_underscore("<o>_<o>") == "<o>_<o>"
    assert remove_underscore("a_b") == "a_b"
    tags = select(TagOptions(remove_underscore=True))
    assert "long hair" in tags and "^_^" in tags


@pytest.mark.parametrize("spelling", ["long_hair", "long hair"])
def test_underscore_or_space_spellings_match_with_remove_underscore(spelling):
    opts = TagOptions(remove_underscore=True, undesired_tags=f"{spelling},1boy")
    assert "long hair" not in select(opts)
    opts = TagOptions(remove_underscore=True, always_first_tags=spelling)
    assert select(opts)[0] == "long hair"
    opts = TagOptions(remove_underscore=True, tag_replacement=f"{spelling},flowing hair")
    assert "flowing hair" in select(opts) and "long hair" not in select(opts)


def test_rating_tags_first_or_last_and_undesired_rating():
    assert select(TagOptions(use_rating_tags=True))[0] == "general"
    assert select(TagOptions(use_rating_tags_as_last_tag=True))[-1] == "general"
    both = select(TagOptions(use_rating_tags=True, use_rating_tags_as_last_tag=True))  # the GUI's two checkboxes
    assert both[0] == "general" and both.count("general") == 1  # first, as sd-scripts
    assert "general" not in select(TagOptions(use_rating_tags=True, undesired_tags="general"))


def test_quality_and_rating_in_json_layout_sorted_by_confidence():
    names = ["rating_general", "rating_explicit", "best_quality", "bad_quality", "a_tag", "b_tag", "some_artist"]
    cats = ["rating", "rating", "quality", "quality", "general", "general", "artist"]
    sel = TagSelector(TagLabels(names, cats, order_by_confidence=True),
                      TagOptions(use_rating_tags=True, use_quality_tags_as_last_tag=True))
    tags = sel.select(np.array([0.2, 0.7, 0.1, 0.3, 0.5, 0.9, 0.6])).tags
    assert tags == ["rating_explicit", "b_tag", "some_artist", "a_tag", "bad_quality"]


def test_category_thresholds():
    thresholds = {"general": 0.65, "character": 0.85, "copyright": .35, "artist": .35, "meta": .35, "model": .35}
    tags = select(TagOptions(thresholds=thresholds))
    assert tags == ["long_hair", "^_^", "hatsune_miku_(vocaloid)"]


def test_mcut_threshold_and_floor():
    assert mcut_threshold(np.array([0.9, 0.85, 0.3, 0.2])) == pytest.approx(0.575)
    values = {"1girl": 0.95, "1boy": 0.9, "long_hair": 0.2, "solo": 0.1, "kagamine_rin": 0.12, "vocaloid": 0.01}
    tags = select(TagOptions(general_mcut=True, character_mcut=True), values=values)
    assert tags == ["1girl", "1boy"]  # character MCut would be 0.065, floored to 0.15


def test_scores_are_reported():
    result = TagSelector(labels(), TagOptions()).select(vec(ALL))
    assert result.scores["long_hair"] == pytest.approx(0.7)
    assert result.by_category["character"] == ["hatsune_miku_(vocaloid)", "kagamine_rin"]


def test_score_vector_of_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="label file"):
        TagSelector(labels(), TagOptions()).select(np.zeros(3))


def test_parse_tag_list():
    assert parse_tag_list("a, b,,c ", ", ") == ["a", "b", "c"]
    assert parse_tag_list("a b", " ") == ["a", "b"]
    assert parse_tag_list("a | b, c", " | ") == ["a", "b", "c"]
    assert parse_tag_list(None) == []
