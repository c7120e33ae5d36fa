"""The tiny Florence-2 stand-in behaves like the transformers-native Florence-2 repos: task tokens, new tokens only, padding."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tests.fixtures import vlm_florence2  # noqa: E402

pytestmark = pytest.mark.timeout(300)
MAX_NEW = 12
# the processor's own expansion of the task tokens that take no input (PromptGen's tokens pass through as text)
TASK_PROMPTS = {
    "<CAPTION>": "What does the image describe?",
    "<DETAILED_CAPTION>": "Describe in detail what is shown in the image.",
    "<MORE_DETAILED_CAPTION>": "Describe with a paragraph what is shown in the image.",
    "<OCR>": "What is the text in the image?",
    "<OD>": "Locate the objects with category name in the image.",
    "<GENERATE_TAGS>": "<GENERATE_TAGS>",
}
TASKS = ["<MORE_DETAILED_CAPTION>", "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"]


def images() -> list[Image.Image]:
    """Small images of different colours, sizes and content."""
    return [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (40, 72), (20, 160, 90)),
            Image.effect_noise((56, 56), 60).convert("RGB"), Image.linear_gradient("L").resize((50, 30)).convert("RGB")]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(folder, processor, model) loaded through the Auto classes, as a user of the real repo would."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = vlm_florence2.make_florence2(tmp_path_factory.mktemp("florence2"))
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return folder, processor, model


def single(processor, model, image, task: str) -> torch.Tensor:
    inputs = processor(text=task, images=image, return_tensors="pt")
    return model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)


def test_layout_classes_and_generation_config(loaded):
    from transformers import Florence2ForConditionalGeneration, Florence2Processor

    folder, processor, model = loaded
    assert isinstance(model, Florence2ForConditionalGeneration) and isinstance(processor, Florence2Processor)
    assert model.config.is_encoder_decoder
    assert json.loads((folder / "config.json").read_text())["model_type"] == "florence2"
    assert processor.tokenizer.chat_template is None and getattr(processor, "chat_template", None) is None
    generation = model.generation_config
    assert (generation.num_beams, generation.no_repeat_ngram_size, generation.decoder_start_token_id,
            generation.forced_bos_token_id, generation.eos_token_id) == (3, 3, 2, 0, 2)
    names = {name.split(".")[1] for name, _ in model.named_modules() if name.count(".") == 1}
    assert {"vision_tower", "multi_modal_projector", "language_model"} <= names  # the quantisation skip names


def test_task_token_is_the_whole_text_and_expands_to_its_prompt(loaded):
    _, processor, _ = loaded
    image = images()[0]
    for task, prompt in TASK_PROMPTS.items():
        ids = processor(text=task, images=image, return_tensors="pt")["input_ids"][0].tolist()
        assert ids.count(vlm_florence2.IMAGE_ID) == vlm_florence2.IMAGE_TOKENS
        assert processor.tokenizer.decode(ids) == "<image>" * vlm_florence2.IMAGE_TOKENS + f"<s>{prompt}</s>"
    with pytest.raises(ValueError, match="only content"):
        processor(text="<CAPTION> of a red square", images=image)


def test_generate_returns_only_new_tokens_and_post_processing_gives_the_caption(loaded):
    _, processor, model = loaded
    image = images()[0]
    out = single(processor, model, image, "<MORE_DETAILED_CAPTION>")
    assert out[0, 0].item() == vlm_florence2.EOS_ID and out[0, 1].item() == vlm_florence2.BOS_ID  # decoder start, forced bos
    assert out.shape[1] <= MAX_NEW + 1
    raw = processor.batch_decode(out, skip_special_tokens=False)[0]
    caption = processor.batch_decode(out, skip_special_tokens=True)[0].strip()
    parsed = processor.post_process_generation(raw, task="<MORE_DETAILED_CAPTION>", image_size=image.size)
    assert parsed == {"<MORE_DETAILED_CAPTION>": caption} and caption


def test_captions_differ_and_a_right_padded_batch_matches_but_left_padding_does_not(loaded):
    _, processor, model = loaded
    pictures = images()
    outs = [single(processor, model, image, task) for image, task in zip(pictures, TASKS)]
    captions = [processor.batch_decode(out, skip_special_tokens=True)[0].strip() for out in outs]
    assert all(captions) and len(set(captions)) >= 2, captions

    def batch_captions(side: str) -> list[str]:
        processor.tokenizer.padding_side = side
        batch = processor(text=TASKS, images=pictures, return_tensors="pt", padding=True)
        assert (batch["attention_mask"] == 0).any()  # the prompts differ in length
        out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW)
        return [caption.strip() for caption in processor.batch_decode(out, skip_special_tokens=True)]

    try:
        assert batch_captions("right") == captions
        # BART's learned positions shift under left padding: the encoder sees other positions, captions change
        assert batch_captions("left") != captions
    finally:
        processor.tokenizer.padding_side = "right"
