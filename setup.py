"""Install captionkit under the single import name `captionkit` (never a top-level `library` or `finetune`)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    """The requirement lines of a requirements file, following `-r other.txt` includes."""
    lines = []
    for line in (here / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("-r "):
            lines += read_requirements(line[3:].strip())
        elif line and not line.startswith("#"):
            lines.append(line)
    return lines


def code_packages() -> list[str]:
    """captionkit, plus library/ and finetune/ as its subpackages captionkit.library and captionkit.finetune.

    sd-scripts installs its own top-level `library` (editable) into the same venvs, so captionkit's must not be one.
    The scripts import `library` absolutely: the `captionkit` command runs them by path with their folder's parent
    first on sys.path, as in a checkout (captionkit/launcher.py).
    """
    library = find_packages(where=str(here), include=["library", "library.*"])
    return ["captionkit", "captionkit.finetune"] + [f"captionkit.{name}" for name in library]


tagger = read_requirements("requirements-tagger.txt")  # the light install: the tagger needs no torch
captioners = [r for r in read_requirements("requirements.txt") if r not in tagger]

setup(
    name="captionkit",
    version="0.1.0",
    description="Fast, robust, sd-scripts compatible captioning for diffusion-model training datasets",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=code_packages(),
    package_dir={"captionkit.library": "library", "captionkit.finetune": "finetune"},
    package_data={"captionkit.library": ["data/*.json", "data/*.html", "data/*.js"]},
    entry_points={"console_scripts": ["captionkit = captionkit.launcher:main"]},
    python_requires=">=3.10",
    install_requires=tagger,
    extras_require={
        "captioners": captioners,  # BLIP, BLIP-2, GIT, JoyCaption: pip install ".[captioners]"
        "tensorflow": ["tensorflow-cpu>=2.15"],
        "ray": ["ray[data]>=2.10"],  # override_num_blocks (library.distributed.runner) arrived in 2.10; tested with 2.60
        "quantization": ["bitsandbytes>=0.43"],
        "fp16": ["onnx>=1.16"],  # the tagger's --fp16 model conversion
        "nvml": ["nvidia-ml-py>=12.535"],  # free GPU memory sizes the tagger's batch (GPU UUIDs in CUDA_VISIBLE_DEVICES)
    },
)
