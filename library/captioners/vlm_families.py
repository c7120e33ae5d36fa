"""The VLM families make_captions_by_vlm.py knows: model types, example repos, default prompts and each family's quirks."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PROMPT = "Describe this image in detail in one paragraph."


@dataclass(frozen=True)
class Family:
    """One family of image-text-to-text models and what captioning with it needs.

    Attributes:
        name: what --list_models shows.
        model_types: config.json model_type values of the family.
        examples: (repo id, download size, licence) of checkpoints people caption with.
        default_prompt: the prompt when neither --prompt nor --prompt_file is given.
        padding_side: batch padding ('left' for decoder-only models; Florence-2, an encoder-decoder, pads right).
        task_tokens: Florence-2: the task tokens a prompt may be (the text input is the task token alone, no chat).
        image_kwargs: passed to the processor with the images (e.g. Gemma 3's pan-and-scan off).
        never_quantize: module names kept in full precision by --quantization (vision tower, projector, lm_head).
        notes: one line for --list_models.
    """

    name: str
    model_types: tuple[str, ...]
    examples: tuple[tuple[str, str, str], ...]
    default_prompt: str = DEFAULT_PROMPT
    padding_side: str = "left"
    task_tokens: tuple[str, ...] = ()
    image_kwargs: dict = field(default_factory=dict)
    never_quantize: tuple[str, ...] = ("vision_tower", "multi_modal_projector", "lm_head")
    notes: str = ""

    @property
    def uses_task_tokens(self) -> bool:
        return bool(self.task_tokens)


FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<GENERATE_TAGS>", "<MIXED_CAPTION>",
                  "<MIXED_CAPTION_PLUS>", "<ANALYZE>")

FAMILIES: tuple[Family, ...] = (
    Family("Qwen2.5-VL", ("qwen2_5_vl", "qwen2_vl"),
           (("Qwen/Qwen2.5-VL-3B-Instruct", "7.5 GB", "Qwen Research licence (non-commercial)"),
            ("Qwen/Qwen2.5-VL-7B-Instruct", "16.6 GB", "Apache-2.0")),
           never_quantize=("visual", "lm_head"),
           notes="dynamic resolution: image tokens grow with the image up to the repo's max_pixels (see --max_pixels)"),
    Family("Qwen3-VL", ("qwen3_vl", "qwen3_vl_moe"),
           (("Qwen/Qwen3-VL-4B-Instruct", "8.9 GB", "Apache-2.0"),
            ("Qwen/Qwen3-VL-8B-Instruct", "17.5 GB", "Apache-2.0")),
           never_quantize=("visual", "lm_head"),
           notes="dynamic resolution (patch 16): image tokens grow with the image (see --max_pixels)"),
    Family("Gemma 3", ("gemma3",),
           (("google/gemma-3-4b-it", "8.6 GB", "Gemma terms of use (gated: accept them on the hub)"),
            ("google/gemma-3-12b-it", "24.4 GB", "Gemma terms of use (gated)")),
           image_kwargs={"do_pan_and_scan": False},
           notes="896 px SigLIP, 256 image tokens; pan-and-scan off; its chat template already holds <bos>"),
    Family("Florence-2", ("florence2",),
           (("florence-community/Florence-2-large", "1.5 GB", "MIT"),
            ("florence-community/Florence-2-base", "0.5 GB", "MIT")),
           default_prompt="<MORE_DETAILED_CAPTION>", padding_side="right", task_tokens=FLORENCE_TASKS,
           never_quantize=("vision_tower", "multi_modal_projector"),
           notes="the transformers-native layout only (remote-code copies such as PromptGen need converting); "
                 "--prompt is a task token: " + " ".join(FLORENCE_TASKS[:3])),
    Family("SmolVLM / Idefics3", ("smolvlm", "idefics3"),
           (("HuggingFaceTB/SmolVLM-256M-Instruct", "0.5 GB", "Apache-2.0"),
            ("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "4.5 GB", "Apache-2.0")),
           never_quantize=("vision_model", "connector", "lm_head"),
           notes="small and fast; images are split into tiles plus a global view"),
    Family("LLaVA-OneVision", ("llava_onevision",),
           (("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "1.8 GB", "Apache-2.0"),
            ("llava-hf/llava-onevision-qwen2-7b-ov-hf", "16.1 GB", "Apache-2.0")),
           notes="SigLIP + Qwen2, any-resolution grids"),
    Family("JoyCaption (LLaVA)", ("llava",),
           (("fancyfeast/llama-joycaption-beta-one-hf-llava", "17.0 GB", "Llama 3.1 community licence"),),
           default_prompt="Write a long descriptive caption for this image in a formal tone.",
           notes="also finetune/dual_caption.py (tag line + description, JoyCaption's prompt set)"),
)

GENERIC = Family("other image-text-to-text model", (), (), notes="any model transformers loads with "
                 "AutoModelForImageTextToText and a processor with a chat template")


def family_for(model_type: str) -> Family:
    """The family of a config.json model_type; GENERIC for models this registry does not list."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return GENERIC


def describe_families() -> str:
    """The --list_models text: each family, its example repos with download size and licence, and its notes."""
    lines = ["Families (--model takes a hub id or a local folder; weights must be safetensors, no remote code):"]
    for family in FAMILIES:
        lines.append(f"\n{family.name}  [model_type: {', '.join(family.model_types)}]")
        for repo, size, licence in family.examples:
            lines.append(f"  {repo:<48} {size:>8}  {licence}")
        lines.append(f"  default prompt: {family.default_prompt}")
        if family.notes:
            lines.append(f"  {family.notes}")
    lines.append(f"\nOther: {GENERIC.notes}.")
    return "\n".join(lines)
