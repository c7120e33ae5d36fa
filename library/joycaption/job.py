"""The prompted caption job: per image one caption per task (JoyCaption's tags + description, a VLM's prompt),
from one backend, with retries and optional {tags} from existing tag files."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

from library.joycaption.generation import GLITCH_TEXT, CaptionJob, Generation, Sampling, glitch_reason
from library.files.sidecars import one_line
from library.errors import FatalError
from library.run.jobs import ItemResult, Job, Model, image_seed
from library.outputs.sidecar import sidecar_writer
from library.outputs.writer import ResultWriter
from library.run.pipeline import LoadedItem
from library.joycaption.prompt_tags import NO_TAGS_NOTE, TagSource, fill_tags
from library.run.runner import RunOptions, RunOutcome, run

logger = logging.getLogger(__name__)

MODES = ("dual", "tags", "description")


@dataclass(frozen=True)
class CaptionTask:
    """One of the captions written per image: its name, prompt and token budget."""

    name: str
    prompt: str
    max_new_tokens: int


class Backend(Protocol):
    """What a JoyCaption backend offers the run (LocalJoyCaption, ApiJoyCaption)."""

    def loader(self) -> Callable: ...

    def images_per_batch(self, prompts: Sequence[str], max_new_tokens: int) -> int: ...

    def prepare(self, items: list[LoadedItem]): ...

    def run(self, state, jobs: Sequence[CaptionJob]) -> list[Generation | str]: ...


@dataclass
class DualCaptionConfig:
    """Everything a dual-caption run needs, resolved from the command line.

    Args:
        image_path: a folder of images or one image file.
        tasks: the captions per image, in line order (tags then description, or just one).
        batch_size: images per batch; None = the backend decides (free GPU memory, API concurrency).
        workers: image-decoding processes (0 = decode in this process).
        max_retries: extra attempts for a caption that loops, comes back empty or hits the token limit.
        tags_from: extension of existing tag files whose text fills `{tags}` in the prompts (None: not read).
    """

    image_path: Path
    tasks: list[CaptionTask]
    recursive: bool = False
    caption_extension: str = ".txt"
    output_dir: Path | None = None
    overwrite: bool = False
    batch_size: int | None = None
    workers: int = 4
    sampling: Sampling = field(default_factory=Sampling)
    max_retries: int = 2
    debug: bool = False
    progress: bool = True
    tags_from: str | None = None


def pick_attempt(attempts: list[Generation | str]) -> tuple[Generation | None, str | None, str | None]:
    """(caption to write or None, error, warning) for one caption from all its attempts, oldest first.

    A clean attempt wins. Otherwise the latest attempt that was only cut off at the token limit is written,
    with a warning; a caption that loops, refuses or is empty in every attempt is an error (no file is
    written, so the next run tries that image again).
    """
    tries = f"after {len(attempts)} attempt{'s' if len(attempts) > 1 else ''}"
    gens = [g for g in attempts if isinstance(g, Generation)]
    if not gens:
        return None, str(attempts[-1]), None
    reason = glitch_reason(gens[-1])
    if reason is None:
        return gens[-1], None, None
    cut = [g for g in gens if glitch_reason(g) == "limit"]
    if cut:
        return cut[-1], None, f"{GLITCH_TEXT['limit']} {tries}; written anyway"
    return None, f"{GLITCH_TEXT[reason]} {tries}", None


def _seed_key(path: Path, root: Path | None) -> str:
    try:
        return (path.relative_to(root) if root is not None else Path(path.name)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def caption_batch(backend: Backend, items: list[LoadedItem], tasks: Sequence[CaptionTask], sampling: Sampling,
                  max_retries: int, root: Path | None = None, tags: Sequence[str] | None = None,
                  ) -> list[tuple[list[str] | None, str | None, list[str]]]:
    """Caption a batch: per item (captions in task order or None, error or None, warnings).

    The backend prepares each image once (one vision pass / one upload encoding) for all captions and retries.
    With sampling and a seed, each image's captions use their own seed from the seed and the image's path relative
    to `root`, so they do not depend on the batch the image lands in. `tags` (one string per item) fill `{tags}`
    in the prompts.
    """
    state = backend.prepare(items)
    seeded = sampling.seed is not None and not sampling.greedy
    keys = [f"{_seed_key(item.path, root)}#{t.name}" for item in items for t in tasks]
    jobs = [CaptionJob(i // len(tasks), fill_tags(t.prompt, tags[i // len(tasks)]) if tags is not None else t.prompt,
                       t.max_new_tokens, sampling,
                       image_seed(sampling.seed, keys[i]) if seeded else None)
            for i, t in enumerate(t for _ in items for t in tasks)]
    history: list[list[Generation | str]] = [[g] for g in backend.run(state, jobs)]
    pending = [i for i, h in enumerate(history) if isinstance(h[-1], Generation) and glitch_reason(h[-1])]
    for attempt in range(1, max_retries + 1):
        if not pending:
            break
        for i in pending:
            logger.debug("row %d, %s: %s; retry %d", jobs[i].row, tasks[i % len(tasks)].name,
                         glitch_reason(history[i][-1]), attempt)
        retry = [replace(jobs[i], sampling=sampling.for_retry(attempt),
                         seed=image_seed(sampling.seed or 0, f"{keys[i]}#retry {attempt}")) for i in pending]
        for i, gen in zip(pending, backend.run(state, retry)):
            if isinstance(gen, str):  # the retry failed outright: keep the glitched caption and stop here
                continue
            history[i].append(gen)
        pending = [i for i in pending if glitch_reason(history[i][-1]) and len(history[i]) == attempt + 1]
    results = []
    for row in range(len(items)):
        captions: list[str] = []
        errors: list[str] = []
        warnings: list[str] = []
        for t_index, task in enumerate(tasks):
            chosen, error, warning = pick_attempt(history[row * len(tasks) + t_index])
            if error:
                errors.append(f"{task.name}: {error}")
            if warning:
                warnings.append(f"{task.name} caption {warning}" if len(tasks) > 1 else f"caption {warning}")
            captions.append(one_line(chosen.text) if chosen is not None else "")
        results.append((None if errors else captions, "; ".join(errors) or None, warnings))
    return results


class DualCaptionModel(Model):
    """A JoyCaption backend (local model or API client) with the run's caption tasks, sampling and retries."""

    def __init__(self, backend: Backend, cfg: DualCaptionConfig):
        self.backend, self.cfg, self.loader = backend, cfg, backend.loader()
        self.root = cfg.image_path if cfg.image_path.is_dir() else cfg.image_path.parent
        self.tag_source = TagSource(cfg.tags_from, self.root, cfg.output_dir) if cfg.tags_from else None
        self.batch_size = cfg.batch_size or backend.images_per_batch([t.prompt for t in cfg.tasks],
                                                                     max(t.max_new_tokens for t in cfg.tasks))

    def process(self, items: list[LoadedItem]) -> list[ItemResult]:
        if self.tag_source is None:
            return self._caption(items, None)
        tags: list[str | None] = []
        unreadable: dict[int, str] = {}
        for i, item in enumerate(items):
            try:
                tags.append(self.tag_source.read(item.path))
            except OSError as exc:  # that image fails (its tag file is named), the others go on
                unreadable[i] = f"tag file: {exc}"
                tags.append(None)
        keep = [i for i in range(len(items)) if i not in unreadable]
        done = iter(self._caption([items[i] for i in keep], [tags[i] or "" for i in keep]) if keep else [])
        out = []
        for i in range(len(items)):
            if i in unreadable:
                out.append(ItemResult.failed(unreadable[i]))
                continue
            result = next(done)
            if tags[i] is None:
                result.notes.append(NO_TAGS_NOTE)
            out.append(result)
        return out

    def _caption(self, items: list[LoadedItem], tags: list[str] | None) -> list[ItemResult]:
        results = caption_batch(self.backend, items, self.cfg.tasks, self.cfg.sampling, self.cfg.max_retries,
                                self.root, tags)
        return [ItemResult("\n".join(captions) if captions is not None else None, error, warnings=warnings,
                           details={"captions": captions} if captions is not None else None)
                for captions, error, warnings in results]

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


@dataclass
class DualCaptionJob(Job):
    """A JoyCaption run; make_backend loads the model or checks the server (once per process that runs batches)."""

    cfg: DualCaptionConfig
    make_backend: Callable[[], Backend]
    uses_gpu: bool = True

    def open(self) -> DualCaptionModel:
        return DualCaptionModel(self.make_backend(), self.cfg)

    def debug_lines(self, path: Path, result: ItemResult) -> list[str]:
        captions = (result.details or {}).get("captions") or [result.caption]
        return [f"{path} [{task.name}]: {text}" for task, text in zip(self.cfg.tasks, captions)]


def run_dual_caption(cfg: DualCaptionConfig, make_backend: Callable[[], Backend], ray=None,
                     failures_file: Path | None = None, uses_gpu: bool = True,
                     writer: ResultWriter | None = None) -> RunOutcome:
    """Caption every image under cfg.image_path that needs it (on Ray Data when `ray` is given).

    Args:
        cfg: the run's settings.
        make_backend: builds the backend (loads the model or checks the server); called only when there is work.
        writer: where captions go (default: sidecars by cfg.caption_extension / cfg.output_dir).
    """
    if not cfg.tasks:
        raise FatalError("nothing to generate: no caption task")
    opts = RunOptions(cfg.image_path, recursive=cfg.recursive, resume=not cfg.overwrite, workers=cfg.workers,
                      progress=cfg.progress, debug=cfg.debug, failures_file=failures_file, ray=ray)
    writer = writer or sidecar_writer(cfg.caption_extension, cfg.image_path, cfg.output_dir)
    outcome = run(DualCaptionJob(cfg, make_backend, uses_gpu), writer, opts)
    if outcome.warnings:
        logger.warning("%d captions were written although they hit the token limit (raise the token limit "
                       "or check them)", len(outcome.warnings))
    return outcome
