"""Dual captioning run: per image a tag line and a description from one JoyCaption backend, retries, atomic sidecars."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

from library.joycaption.generation import GLITCH_TEXT, CaptionJob, Generation, Sampling, glitch_reason, one_line
from library.discovery import discover_images
from library.errors import FatalError
from library.pipeline import LoadedItem, RunSummary, run_batches
from library.sidecars import SidecarLayout, write_captions

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


@dataclass
class DualCaptionOutcome:
    summary: RunSummary
    warnings: list[tuple[Path, str]] = field(default_factory=list)


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


def caption_batch(backend: Backend, items: list[LoadedItem], tasks: Sequence[CaptionTask], sampling: Sampling,
                  max_retries: int) -> list[tuple[list[str] | None, str | None, list[str]]]:
    """Caption a batch: per item (captions in task order or None, error or None, warnings).

    The backend prepares each image once (one vision pass / one upload encoding) for all captions and retries.
    """
    state = backend.prepare(items)
    jobs = [CaptionJob(row, t.prompt, t.max_new_tokens, sampling) for row in range(len(items)) for t in tasks]
    history: list[list[Generation | str]] = [[g] for g in backend.run(state, jobs)]
    pending = [i for i, h in enumerate(history) if isinstance(h[-1], Generation) and glitch_reason(h[-1])]
    for attempt in range(1, max_retries + 1):
        if not pending:
            break
        for i in pending:
            logger.debug("row %d, %s: %s; retry %d", jobs[i].row, tasks[i % len(tasks)].name,
                         glitch_reason(history[i][-1]), attempt)
        retry = [replace(jobs[i], sampling=sampling.for_retry(attempt)) for i in pending]
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
                warnings.append(f"{task.name} caption {warning}")
            captions.append(one_line(chosen.text) if chosen is not None else "")
        results.append((None if errors else captions, "; ".join(errors) or None, warnings))
    return results


def run_dual_caption(cfg: DualCaptionConfig, make_backend: Callable[[], Backend]) -> DualCaptionOutcome:
    """Caption every image under cfg.image_path that needs it; the backend is built only when there is work.

    Args:
        cfg: the run's settings.
        make_backend: builds the backend (loads the model or checks the server).
    """
    if not cfg.tasks:
        raise FatalError("nothing to generate: no caption task")
    images = discover_images(cfg.image_path, cfg.recursive)
    try:
        layout = SidecarLayout(cfg.caption_extension, cfg.image_path, cfg.output_dir)
    except ValueError as exc:
        raise FatalError(str(exc)) from None
    outcome = DualCaptionOutcome(RunSummary(verb="captioned"))
    summary = outcome.summary
    if not cfg.overwrite:
        todo = [p for p in images if not layout.exists_for(p)]
        summary.skipped = summary.total = len(images) - len(todo)
        if summary.skipped:
            logger.info("%d images already have a %s file (use --overwrite to redo them)", summary.skipped,
                        layout.extension)
        images = todo
    logger.info("found %d images to caption", len(images))
    if not images:
        return outcome

    backend = make_backend()
    prompts = [t.prompt for t in cfg.tasks]
    batch_size = cfg.batch_size or backend.images_per_batch(prompts, max(t.max_new_tokens for t in cfg.tasks))

    def process(batch: list[LoadedItem]) -> list[str | None]:
        results = caption_batch(backend, batch, cfg.tasks, cfg.sampling, cfg.max_retries)
        written = iter(write_captions([(layout.path_for(item.path), "\n".join(captions))
                                       for item, (captions, _, _) in zip(batch, results) if captions is not None]))
        errors: list[str | None] = []
        for item, (captions, error, warnings) in zip(batch, results):
            error = error if captions is None else next(written)
            errors.append(error)
            if error is not None:
                continue
            for w in warnings:
                outcome.warnings.append((item.path, w))
                logger.warning("%s: %s", item.path, w)
            if cfg.debug:
                for task, text in zip(cfg.tasks, captions):
                    logger.info("%s [%s]: %s", item.path, task.name, text)
        return errors

    try:
        run_batches(images, backend.loader(), process, batch_size=batch_size, workers=cfg.workers,
                    summary=summary, desc="captioning", progress=cfg.progress)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    if outcome.warnings:
        logger.warning("%d captions were written although they hit the token limit (raise --*-max-new-tokens "
                       "or check them)", len(outcome.warnings))
    return outcome
