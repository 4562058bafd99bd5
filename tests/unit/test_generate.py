"""Batched greedy generation: each distinct image encoded once, answers equal to the model's own pixel path."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rsvlm.config import compose
from rsvlm.data.images import preprocess_images
from rsvlm.data.template import IMAGE_PLACEHOLDER, chat_template, tokenize_conversation
from rsvlm.eval.generate import MAX_PROMPT_TOKENS, Prompt, generate_answers
from rsvlm.model.build import load_model

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(compose([f"workdir={tmp_path_factory.mktemp('generate')}"]).model)


@pytest.fixture(scope="module")
def prompts():
    images = [Image.new("RGB", (40 + 8 * i, 48), (30 * i, 200 - 40 * i, 90)) for i in range(3)]
    questions = ["Is there a ship?", "How many storage tanks are there?", "Is the airplane left of the ship?"]
    asked = [Prompt(q, images[i % 3]) for i, q in enumerate(questions * 2)]  # every image asked twice
    return asked + [Prompt("Describe remote sensing.")]  # and one text-only prompt


def pixel_path_answer(loaded, prompt: Prompt) -> str:
    """What the model answers given the pixels (its vision tower inside generate), one prompt at a time."""
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    text = f"{IMAGE_PLACEHOLDER}\n{prompt.question}" if prompt.image is not None else prompt.question
    ids = tokenize_conversation([{"from": "human", "value": text}], tokenizer, chat_template(loaded.config.chat_template),
                                loaded.image_token_count, MAX_PROMPT_TOKENS, for_generation=True).input_ids
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if prompt.image is not None:
        pixels = preprocess_images([prompt.image], loaded.processor.image_processor, loaded.config.image_aspect)
        inputs["pixel_values"] = torch.from_numpy(pixels)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0, len(ids):], skip_special_tokens=True).strip()


def test_batched_answers_equal_the_pixel_path_one_by_one(loaded, prompts):
    expected = [pixel_path_answer(loaded, p) for p in prompts]
    assert len(set(expected)) > 1  # the untrained model answers differently per prompt: the check can fail
    for batch_size in (1, 3, 16):
        assert generate_answers(loaded, prompts, batch_size=batch_size, max_new_tokens=NEW_TOKENS) == expected


def test_each_distinct_image_goes_through_the_vision_tower_once(loaded, prompts):
    encoded: list[int] = []
    hook = loaded.model.model.vision_tower.register_forward_hook(
        lambda module, args, output: encoded.append(args[0].shape[0]))
    try:
        generate_answers(loaded, prompts, batch_size=2, max_new_tokens=NEW_TOKENS)
    finally:
        hook.remove()
    assert encoded == [2, 1]  # 3 distinct images of 7 prompts, 2 per batch
