"""Caption token counts per text encoder (CLIP, T5): real tokenizers when found locally, else a labelled estimate."""

from __future__ import annotations

import logging
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from library.errors import FatalError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoder:
    """A text encoder people train with: its token limits and where its tokenizer lives on the hub.

    Attributes:
        limits: (tokens, who cuts there), ascending.
        default_limit: the limit cut captions are listed for unless asked otherwise.
        hub: repos whose tokenizer files are looked for in the local Hugging Face cache.
        files: the files that make a usable tokenizer folder (any one set of them).
    """

    key: str
    title: str
    limits: tuple[tuple[int, str], ...]
    default_limit: int
    hub: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]


ENCODERS = {
    "clip": Encoder("clip", "CLIP (ViT-L / OpenCLIP bigG)",
                    ((75, "SD 1.5 and SDXL"), (150, "sd-scripts --max_token_length 150"),
                     (225, "sd-scripts --max_token_length 225")), 75,
                    ("openai/clip-vit-large-patch14",), (("tokenizer.json",), ("vocab.json", "merges.txt"))),
    "t5": Encoder("t5", "T5-XXL", ((256, "Flux schnell"), (512, "Flux dev and SD3")), 512,
                  ("google/t5-v1_1-xxl",), (("tokenizer.json",), ("spiece.model",))),
}
CLIP_CHUNK = 75  # CLIP reads 77 tokens: 75 of text between its start and end tokens; sd-scripts joins 2 or 3 chunks
# The estimate's error on tests/fixtures/captions_corpus.py against CLIP's real BPE vocabulary (test_tokens.py):
ESTIMATE_CAPTION_ERROR = 0.20  # at most this share off on any one caption
ESTIMATE_TOTAL_ERROR = 0.05  # and this share off summed over the set
# CLIP's pre-tokenizer (lower-cased text): contractions, letter runs, single digits, runs of other symbols
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")
_SHORT_WORD = 8  # letter runs up to this long are one token (the vocabulary holds common words whole)
_CHARS_PER_PIECE = 5  # longer ones split into pieces of about this many letters


def estimate_count(text: str) -> int:
    """Tokens of `text` as CLIP's BPE would make them, estimated without its vocabulary (see ESTIMATE_*_ERROR)."""
    n = 0
    for m in _PIECES.finditer(text.lower()):
        piece = m.group()
        if piece[0].isalpha():
            n += 1 if len(piece) <= _SHORT_WORD else math.ceil(len(piece) / _CHARS_PER_PIECE)
        elif piece[0].isdigit() or piece[0] == "'":
            n += 1
        else:
            n += len(piece)  # punctuation: about one token per mark (', ' '_' '(' ')')
    return n


class Tokenizer:
    """Counts the text tokens of captions (no start/end tokens): a real tokenizer, or the estimate.

    Attributes:
        source: where the vocabulary came from, or 'estimate'.
    """

    estimate = True
    source = "estimate"

    def __init__(self, encoder: str = "clip"):
        self.encoder = encoder

    def count(self, text: str) -> int:
        return estimate_count(text)

    def count_many(self, texts: list[str]) -> list[int]:
        return [self.count(t) for t in texts]

    def label(self) -> str:
        if self.estimate and self.encoder == "clip":
            return (f"ESTIMATED, no tokenizer found: up to {ESTIMATE_CAPTION_ERROR:.0%} off per caption; "
                    "--tokenizer gives exact counts")
        if self.estimate:
            return ("ESTIMATED by CLIP's rules, no tokenizer found, not checked against T5's vocabulary; "
                    "--tokenizer gives exact counts")
        return f"tokenizer {self.source}"


class RealTokenizer(Tokenizer):
    """A Hugging Face tokenizer loaded from a local folder (transformers' AutoTokenizer; nothing downloaded)."""

    estimate = False

    def __init__(self, folder: str | os.PathLike, encoder: str = "clip"):
        from transformers import AutoTokenizer

        super().__init__(encoder)
        self.source = str(folder)
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.tok.model_max_length = 1 << 30  # counting long captions is the point: no "longer than 77" warning

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def count_many(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]


def _has_files(folder: Path, encoder: Encoder) -> bool:
    return any(all((folder / name).is_file() for name in names) for names in encoder.files)


def cached_folder(encoder: Encoder) -> Path | None:
    """The local Hugging Face cache snapshot of the encoder's tokenizer, when one was downloaded before."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo in encoder.hub:
        for names in encoder.files:
            found = try_to_load_from_cache(repo, names[0])
            if isinstance(found, str) and _has_files(Path(found).parent, encoder):
                return Path(found).parent
    return None


def parse_tokenizer_spec(spec: str | None) -> dict[str, Path]:
    """'clip=PATH,t5=PATH' -> {encoder: folder}; a bad name is a fatal error."""
    out: dict[str, Path] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, path = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in ENCODERS or not path.strip():
            raise FatalError(f"--tokenizer: expected clip=PATH and/or t5=PATH separated by commas, got {part!r}")
        out[name] = Path(os.path.expanduser(path.strip()))
    return out


def load_tokenizer(encoder: Encoder, path: Path | None = None) -> Tokenizer:
    """The encoder's tokenizer: from `path` (a folder, or a file in it), else the HF cache, else the estimate.

    Raises:
        FatalError: `path` was given but holds no loadable tokenizer.
    """
    if path is not None:
        folder = path.parent if path.is_file() else path
        if not _has_files(folder, encoder):
            wanted = " or ".join(" + ".join(names) for names in encoder.files)
            raise FatalError(f"{path}: no {encoder.key} tokenizer there (expected {wanted})")
        try:
            return RealTokenizer(folder, encoder.key)
        except Exception as exc:  # noqa: BLE001 - any loading failure is one line for the user
            raise FatalError(f"{folder}: cannot load the {encoder.key} tokenizer ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    folder = cached_folder(encoder)
    if folder is not None:
        try:
            return RealTokenizer(folder, encoder.key)
        except Exception as exc:  # noqa: BLE001 - e.g. a T5 spiece.model without the sentencepiece package
            logger.warning("%s: cannot load the %s tokenizer (%s); estimating its token counts instead",
                           folder, encoder.key, exc.__class__.__name__)
    return Tokenizer(encoder.key)


@dataclass
class CaptionTokens:
    """One caption's token count per encoder, and for a cut caption the text the encoder never sees."""

    counts: dict[str, int] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)


class TokenCounter:
    """Token counts of captions for several encoders, each with the limit whose cuts are listed.

    Args:
        tokenizers: encoder key -> Tokenizer.
        limits: encoder key -> the limit cut captions are reported for (default: the encoder's default_limit).
    """

    def __init__(self, tokenizers: dict[str, Tokenizer], limits: dict[str, int] | None = None):
        self.tokenizers = tokenizers
        self.limits = {k: (limits or {}).get(k, ENCODERS[k].default_limit) for k in tokenizers}

    @classmethod
    def load(cls, spec: str | None = None, limits: dict[str, int] | None = None,
             encoders: tuple[str, ...] = tuple(ENCODERS)) -> TokenCounter:
        paths = parse_tokenizer_spec(spec)
        return cls({k: load_tokenizer(ENCODERS[k], paths.get(k)) for k in encoders}, limits)

    @classmethod
    def estimates(cls) -> TokenCounter:
        """Every encoder by the estimate (no tokenizer files read)."""
        return cls({k: Tokenizer(k) for k in ENCODERS})

    def lost_text(self, key: str, text: str, limit: int) -> str:
        """What the encoder cuts off `text` at `limit` tokens: the words from the first one that does not fit."""
        words = list(re.finditer(r"\S+", text))
        tok = self.tokenizers[key]
        lo, hi = 0, len(words)  # the largest number of whole words that fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if tok.count(text[:words[mid - 1].end()]) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return text[words[lo].start():] if lo < len(words) else ""

    def measure_many(self, captions: list[str]) -> list[CaptionTokens]:
        """Per caption, the counts of its longest line (each line is a prompt of its own with wildcards)."""
        lines = [max((ln.strip() for ln in c.split("\n")), key=len, default="") for c in captions]
        out = [CaptionTokens() for _ in captions]
        for key, tok in self.tokenizers.items():
            limit = self.limits[key]
            for result, line, n in zip(out, lines, tok.count_many(lines)):
                result.counts[key] = n
                if n > limit:
                    result.lost[key] = self.lost_text(key, line, limit)
        return out

    def report_lines(self, names: list[str], measured: list[CaptionTokens], max_list: int = 8) -> list[str]:
        """Dataset report lines: counts per encoder, captions over each limit, where the cut falls."""
        out = []
        for key, tok in self.tokenizers.items():
            enc = ENCODERS[key]
            counts = [m.counts[key] for m in measured]
            if not counts:
                continue
            over = ", ".join(f"over {limit} ({who}): {sum(c > limit for c in counts)}" for limit, who in enc.limits)
            out.append(f"  {enc.title} tokens ({tok.label()}): min {min(counts)}, "
                       f"median {statistics.median(counts):g}, max {max(counts)}; {over}")
            cut = [(n, m) for n, m in zip(names, measured) if key in m.lost]
            if cut:
                limit = self.limits[key]
                cut.sort(key=lambda t: -t[1].counts[key])
                shown = "; ".join(f"{n} ({m.counts[key]}): loses \"{_short(m.lost[key])}\"" for n, m in cut[:max_list])
                more = f"; and {len(cut) - max_list} more" if len(cut) > max_list else ""
                what = "1 caption is" if len(cut) == 1 else f"{len(cut)} captions are"
                out.append(f"  {what} cut at {limit} {enc.key} tokens: {shown}{more}")
        return out


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 1] + "\u2026"
