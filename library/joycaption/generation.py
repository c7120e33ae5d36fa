"""Caption jobs of the JoyCaption backends, and the checks that pick retries (loops, refusals, cut-offs, empties)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

MAX_PERIOD = 48  # longest repeating unit looked for, in tokens (or words)
MIN_COVERED = 16  # a loop must cover at least this many tokens ...
MIN_REPEATS = 4  # ... and repeat its unit at least this many times
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
REFUSAL_STARTS = ("i'm sorry", "i am sorry", "sorry, i", "i cannot", "i can't", "i can\u2019t", "i\u2019m sorry",
                  "i apologize", "as an ai")


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one generation call (greedy when do_sample is False or temperature is 0)."""

    do_sample: bool = True
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature <= 0

    def for_retry(self, attempt: int) -> "Sampling":
        """Attempt 1, 2, ...: sample (even after greedy) at a slightly higher temperature with another seed."""
        base = 0.6 if self.greedy else self.temperature
        return Sampling(do_sample=True, temperature=round(min(1.0, base + 0.1 * attempt), 3), top_p=self.top_p,
                        top_k=self.top_k, seed=(self.seed or 0) + 7919 * attempt)


@dataclass(frozen=True)
class CaptionJob:
    """One caption to generate for the image in row `row` of the current batch."""

    row: int
    prompt: str
    max_new_tokens: int
    sampling: Sampling
    seed: int | None = None  # this image's own sampling seed (library.run.jobs.image_seed); None: sampling.seed


def run_in_groups(jobs: Sequence["CaptionJob"], generate) -> list["Generation | str"]:
    """Results of `jobs` in order: jobs sharing max_new_tokens and sampling go to one generate(indices,
    max_new_tokens, sampling, seeds) call (seeds: one per job, or None unless every job has its own)."""
    results: list = [""] * len(jobs)
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((job.max_new_tokens, job.sampling), []).append(i)
    for (max_new_tokens, sampling), idx in groups.items():
        seeds = [jobs[i].seed for i in idx]
        gens = generate(idx, max_new_tokens, sampling, seeds if all(s is not None for s in seeds) else None)
        for i, gen in zip(idx, gens):
            results[i] = gen
    return results


@dataclass
class Generation:
    """One generated caption.

    Attributes:
        text: the decoded caption.
        hit_limit: generation stopped at max_new_tokens instead of an end-of-turn token.
        tokens: the generated token ids when known (local backend), used for loop detection.
    """

    text: str
    hit_limit: bool = False
    tokens: Sequence[int] | None = None


def trailing_loop(units: Sequence, max_period: int = MAX_PERIOD, min_covered: int = MIN_COVERED,
                  min_repeats: int = MIN_REPEATS) -> tuple[int, int] | None:
    """(period, repeats) when `units` ends with one block repeated back to back, else None.

    Args:
        units: token ids or words.
        max_period: longest block looked for.
        min_covered: the repeated run must span at least this many units.
        min_repeats: and contain the block at least this many times.
    """
    n = len(units)
    for period in range(1, min(max_period, n // 2) + 1):
        block = list(units[n - period:])
        repeats = 1
        while (repeats + 1) * period <= n and list(units[n - (repeats + 1) * period:n - repeats * period]) == block:
            repeats += 1
        if repeats >= min_repeats and repeats * period >= min_covered:
            return period, repeats
    return None


def repeated_tags(text: str, min_repeats: int = 4) -> str | None:
    """A comma-separated tag that occurs `min_repeats` or more times (a tag-list loop), else None."""
    counts: dict[str, int] = {}
    for tag in (t.strip().lower() for t in text.split(",")):
        if tag:
            counts[tag] = counts.get(tag, 0) + 1
            if counts[tag] >= min_repeats:
                return tag
    return None


def glitch_reason(gen: Generation) -> str | None:
    """Why this generation should be retried ('empty', 'refusal', 'loop', 'limit'), or None when it looks fine."""
    if not gen.text.strip():
        return "empty"
    if gen.text.strip().lower().startswith(REFUSAL_STARTS):
        return "refusal"
    units = list(gen.tokens) if gen.tokens is not None else _WORD.findall(gen.text)
    if trailing_loop(units) is not None or repeated_tags(gen.text) is not None:
        return "loop"
    if gen.hit_limit:
        return "limit"
    return None


GLITCH_TEXT = {
    "loop": "kept repeating itself",
    "limit": "was cut off at the token limit",
    "empty": "came back empty",
    "refusal": "was a refusal",
}
