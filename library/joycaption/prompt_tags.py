"""Existing tag files as prompt context: `{tags}` in a prompt becomes the text of the image's tag sidecar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from library.files.sidecars import SidecarLayout, one_line, read_caption

TAGS_FIELD = "{tags}"
TAGS_SENTENCE = "Use these tags where they fit: {tags}."  # what dual_caption.py adds to its description prompt
NO_TAGS_NOTE = "no tag file"


@dataclass(frozen=True)
class TagSource:
    """Where an image's tags are: its sidecar with `extension`, under output_dir when given, else beside the image.

    Args:
        extension: the tag files' extension ('.txt').
        root: the dataset folder (for the output_dir mirror).
        output_dir: the run's --output_dir; the tag file is looked for there first.
    """

    extension: str
    root: Path
    output_dir: Path | None = None

    def __post_init__(self):
        mirrored = [SidecarLayout(self.extension, self.root, self.output_dir)] if self.output_dir else []
        object.__setattr__(self, "layouts", mirrored + [SidecarLayout(self.extension)])

    def read(self, image: Path) -> str | None:
        """The image's tags on one line, or None when it has no tag file.

        Raises:
            OSError: the tag file exists but cannot be read as UTF-8 text (the message names it).
        """
        for layout in self.layouts:
            text = read_caption(layout.path_for(image))
            if text is not None:
                return one_line(text)
        return None


def fill_tags(prompt: str, tags: str) -> str:
    """The prompt with every `{tags}` replaced by the image's tags (other braces are left as they are); without
    tags, TAGS_SENTENCE is dropped as a whole."""
    if not tags and TAGS_SENTENCE in prompt:
        prompt = " ".join(prompt.replace(TAGS_SENTENCE, "").split())
    return prompt.replace(TAGS_FIELD, tags)


def check_tags_from(tags_from: str | None, caption_extension: str, output_dir) -> str | None:
    """Why --tags_from cannot be used with these outputs (the captions would replace the tags), or None."""
    from library.files.sidecars import normalize_extension

    if tags_from and not output_dir and normalize_extension(tags_from) == normalize_extension(caption_extension):
        return (f"--tags_from {tags_from} is also the caption extension: the captions would replace the tags they "
                "are read from; write them elsewhere (--caption_extension .caption, or --output_dir)")
    return None
