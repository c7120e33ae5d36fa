"""JoyCaption's published prompt set (package data, byte-exact): caption types, lengths, extra options, prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from library.errors import FatalError

PROMPTS_FILE = Path(__file__).resolve().parents[1] / "data" / "joycaption_prompts.json"

# The system prompt of JoyCaption's batch script and of the dual-caption script users know.
SYSTEM_PROMPT = ("You are a helpful assistant and help users with any queries they may have with no censorship "
                 "or restrictions.")

DEFAULT_TAGS_TYPE, DEFAULT_TAGS_LENGTH = "Booru-like tag list", "50"
DEFAULT_DESC_TYPE, DEFAULT_DESC_LENGTH = "Straightforward", "160"
NAME_OPTION_INDEX = 0  # "If there is a person/character in the image you must refer to them as {name}."


@lru_cache(maxsize=1)
def prompt_data() -> dict:
    """The parsed prompt file: caption_types {type: {'any', 'word_count', 'length'}}, lengths, extra_options."""
    with open(PROMPTS_FILE, encoding="utf-8") as f:
        return json.load(f)


def caption_types() -> list[str]:
    return list(prompt_data()["caption_types"])


def caption_lengths() -> list[str]:
    return list(prompt_data()["lengths"])


def extra_options() -> list[str]:
    return list(prompt_data()["extra_options"])


def _match(value: str, choices: Sequence[str], what: str) -> str:
    """Exact choice, else the one choice equal ignoring case/spaces/underscores/hyphens, else FatalError."""
    if value in choices:
        return value

    def norm(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())

    hits = [c for c in choices if norm(c) == norm(value)]
    if len(hits) == 1:
        return hits[0]
    raise FatalError(f"unknown {what} {value!r}; choose one of: {', '.join(repr(c) for c in choices)} "
                     "(see --list-prompts)")


def resolve_extra_option(option: str) -> str:
    """An extra option given as its 1-based number in --list-prompts, or as (a unique start of) its text."""
    options = extra_options()
    text = option.strip()
    if text.isdigit():
        index = int(text)
        if 1 <= index <= len(options):
            return options[index - 1]
        raise FatalError(f"--extra-option {option}: there are {len(options)} extra options (see --list-prompts)")
    if text in options:
        return text
    hits = [o for o in options if o.lower().startswith(text.lower())]
    if len(hits) == 1:
        return hits[0]
    why = "matches several options" if hits else "is not one of JoyCaption's extra options"
    raise FatalError(f"--extra-option {option!r} {why}; give its number from --list-prompts")


@dataclass(frozen=True)
class PromptSpec:
    """One caption request: a caption type, a length ('any', a word such as 'short', or a number of words), options.

    Args:
        caption_type: one of caption_types() (case and punctuation are forgiven).
        length: one of caption_lengths(); any whole number of words is accepted too.
        extras: extra options, each a full option text or its 1-based number.
        name: fills {name} in the person/character option (required when that option is used).
    """

    caption_type: str
    length: str = "any"
    extras: tuple[str, ...] = field(default_factory=tuple)
    name: str | None = None

    def build(self) -> str:
        """The exact prompt string the model was trained on."""
        return build_prompt(self.caption_type, self.length, self.extras, self.name)


def build_prompt(caption_type: str, length: str | int | None = "any", extras: Sequence[str] = (),
                 name: str | None = None) -> str:
    """Build a JoyCaption prompt exactly as its reference app does.

    Args:
        caption_type: e.g. 'Straightforward' or 'Booru-like tag list'.
        length: 'any' (or None), 'very short' ... 'very long', or a number of words such as '160'.
        extras: extra option texts or numbers; appended after the prompt, separated by single spaces.
        name: the name used by the person/character option.
    """
    types = prompt_data()["caption_types"]
    templates = types[_match(caption_type, list(types), "caption type")]
    length_text = "any" if length is None else str(length).strip()
    if length_text.lower() == "any" or not length_text:
        prompt = templates["any"]
    elif length_text.isdigit():
        if int(length_text) < 1:
            raise FatalError(f"caption length {length!r} must be at least 1 word")
        prompt = templates["word_count"].replace("{word_count}", str(int(length_text)))
    else:
        word = _match(length_text, [x for x in caption_lengths() if not x.isdigit() and x != "any"], "caption length")
        prompt = templates["length"].replace("{length}", word)
    chosen = [resolve_extra_option(e) for e in extras]
    if chosen:
        prompt = prompt + " " + " ".join(chosen)
    if "{name}" in prompt:
        if not name:
            raise FatalError("the person/character extra option needs --name NAME")
        prompt = prompt.replace("{name}", name)
    return prompt


def describe_prompts() -> str:
    """Human-readable list of caption types, lengths and numbered extra options (for --list-prompts)."""
    data = prompt_data()
    lines = ["Caption types (--tags-type / --desc-type):"]
    lines += [f"  {t}" for t in data["caption_types"]]
    words = [x for x in data["lengths"] if x.isdigit()]
    named = [x for x in data["lengths"] if not x.isdigit()]
    lines.append("Lengths (--tags-length / --desc-length):")
    lines.append(f"  {', '.join(named)}, or a number of words ({words[0]}..{words[-1]} as in JoyCaption's app)")
    lines.append("Extra options (--extra-option N, repeatable; option 1 needs --name):")
    lines += [f"  {i:2d}. {o}" for i, o in enumerate(data["extra_options"], 1)]
    lines.append(f"Defaults: tags = {DEFAULT_TAGS_TYPE!r} within {DEFAULT_TAGS_LENGTH} words; "
                 f"description = {DEFAULT_DESC_TYPE!r} within {DEFAULT_DESC_LENGTH} words.")
    return "\n".join(lines)
