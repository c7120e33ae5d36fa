"""The tiny Gemma 3 stand-in behaves like google/gemma-3-4b-it under plain transformers: template, image tokens, captions."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tests.fixtures import vlm_gemma3  # noqa: E402

pytestmark = pytest.mark.timeout(300)
MAX_NEW = 12
PROMPT = "Describe this image."
PROMPTS = [PROMPT, "Caption it.", "Describe this image in one short sentence, please.", "What is shown?"]  # unequal lengths


def images() -> list[Image.Image]:
    """Small images of different colours, sizes and content."""
    return [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (40, 72), (20, 160, 90)),
            Image.effect_noise((56, 56), 60).convert("RGB"), Image.linear_gradient("L").resize((50, 30)).convert("RGB")]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(folder, processor, model) loaded through the Auto classes, as a user of the real repo would."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = vlm_gemma3.make_gemma3(tmp_path_factory.mktemp("gemma3"))
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return folder, processor, model


def rendered_prompt(processor, prompt: str = PROMPT) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def single_caption(processor, model, image, prompt: str) -> tuple[str, int]:
    """The caption of one image and how many tokens were generated (the template already holds <bos>)."""
    inputs = processor(text=[rendered_prompt(processor, prompt)], images=[[image]], return_tensors="pt",
                       add_special_tokens=False)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    new = out[:, inputs["input_ids"].shape[1]:]
    return processor.batch_decode(new, skip_special_tokens=True)[0].strip(), new.shape[1]


def test_layout_classes_and_generation_config(loaded):
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor

    folder, processor, model = loaded
    assert isinstance(model, Gemma3ForConditionalGeneration) and isinstance(processor, Gemma3Processor)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gemma3"
    for name in ("model.safetensors", "preprocessor_config.json", "processor_config.json", "chat_template.json",
                 "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (folder / name).exists(), name
    assert not processor.image_processor.do_pan_and_scan
    assert processor.image_seq_length == vlm_gemma3.MM_TOKENS == model.config.mm_tokens_per_image
    generation = model.generation_config
    assert list(generation.eos_token_id) == [vlm_gemma3.EOS_ID, vlm_gemma3.END_OF_TURN_ID]
    assert (generation.pad_token_id, generation.top_k, generation.top_p) == (vlm_gemma3.PAD_ID, 64, 0.95)
    tokenizer = processor.tokenizer
    for token, token_id in [("<bos>", 2), ("<start_of_turn>", 105), ("<end_of_turn>", 106), ("<start_of_image>", 255999),
                            ("<end_of_image>", 256000), ("<image_soft_token>", 262144)]:
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    names = {name.split(".")[1] for name, _ in model.named_modules() if name.count(".") == 1}
    assert {"vision_tower", "multi_modal_projector", "language_model"} <= names  # the quantisation skip names


def test_chat_template_and_image_token_expansion(loaded):
    _, processor, _ = loaded
    text = rendered_prompt(processor)
    assert text == f"<bos><start_of_turn>user\n<start_of_image>{PROMPT}<end_of_turn>\n<start_of_turn>model\n"
    image = images()[0]
    inputs = processor(text=[text], images=[[image]], return_tensors="pt", add_special_tokens=False)
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(vlm_gemma3.BOS_ID) == 1 and ids[0] == vlm_gemma3.BOS_ID
    assert ids.count(vlm_gemma3.IMAGE_SOFT_ID) == vlm_gemma3.MM_TOKENS
    assert ids.count(vlm_gemma3.BOI_ID) == ids.count(vlm_gemma3.EOI_ID) == 1
    expanded = "\n\n<start_of_image>" + "<image_soft_token>" * vlm_gemma3.MM_TOKENS + "<end_of_image>\n\n"
    assert expanded in processor.tokenizer.decode(ids)
    assert tuple(inputs["pixel_values"].shape[-2:]) == (vlm_gemma3.IMAGE_SIZE, vlm_gemma3.IMAGE_SIZE)
    # the tokenizer adds <bos> like the real one: the rendered template tokenized with special tokens has two
    doubled = processor(text=[text], images=[[image]], return_tensors="pt")["input_ids"][0].tolist()
    assert doubled[:2] == [vlm_gemma3.BOS_ID, vlm_gemma3.BOS_ID]
    # apply_chat_template's own tokenization does not double it
    conversation = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}]}]
    direct = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert direct["input_ids"][0].tolist() == ids


def test_captions_differ_some_end_early_and_a_left_padded_batch_matches(loaded):
    _, processor, model = loaded
    pictures = images()
    singles = [single_caption(processor, model, image, prompt) for image, prompt in zip(pictures, PROMPTS)]
    captions = [caption for caption, _ in singles]
    assert sum(bool(caption) for caption in captions) >= len(captions) - 1
    assert len(set(captions)) >= 3, captions
    lengths = [length for _, length in singles]
    assert min(lengths) < MAX_NEW and max(lengths) == MAX_NEW, lengths  # an end token stops some, not all

    processor.tokenizer.padding_side = "left"
    batch = processor(text=[rendered_prompt(processor, prompt) for prompt in PROMPTS], images=[[image] for image in pictures],
                      return_tensors="pt", padding=True, add_special_tokens=False)
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 1).all()  # padded left
    out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW)
    decoded = processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [caption.strip() for caption in decoded] == captions
