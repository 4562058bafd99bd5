"""Batched greedy generation with left padding and an attention mask (LLaVA#754, #1149: right padding
silently corrupts batched answers), each image encoded once.

Benchmarks ask many questions per image (the synthetic split ~8, RSVQA-HR, FIT-RSFG's several tasks per
scene), and length-sorted batches scatter one image's questions over several batches. So the vision tower and
projector run once per distinct image of a call, in batches, and ``generate`` gets their outputs as
``mm_encoder_outputs`` (transformers' pre-encoded multimodal input) instead of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from PIL import Image
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from rsvlm.data.images import preprocess_images
from rsvlm.data.template import IMAGE_PLACEHOLDER, chat_template, tokenize_conversation
from rsvlm.model.build import LoadedModel
from rsvlm.model.parts import inner_model

# Prompts are never truncated for generation; this only guards against absurd inputs.
MAX_PROMPT_TOKENS = 8192


@dataclass
class Prompt:
    question: str
    image: Optional[Image.Image] = None


@torch.inference_mode()
def generate_answers(loaded: LoadedModel, prompts: Sequence[Prompt], *, batch_size: int = 16,
                     max_new_tokens: int = 32) -> list[str]:
    """The model's greedy answer to each prompt, in order. Prompts of similar length are batched together.

    Prompts are written in the model's own chat template, images prepared with its own aspect setting (a
    checkpoint records both), so evaluation asks as training taught. Prompts that hold the same image object
    share its encoding.
    """
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    template = chat_template(loaded.config.chat_template)
    encoded = []
    for prompt in prompts:
        text = f"{IMAGE_PLACEHOLDER}\n{prompt.question}" if prompt.image is not None else prompt.question
        sample = tokenize_conversation([{"from": "human", "value": text}], tokenizer, template,
                                       loaded.image_token_count, MAX_PROMPT_TOKENS, for_generation=True)
        encoded.append(sample.input_ids)
    features = image_features(loaded, [p.image for p in prompts if p.image is not None], batch_size)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids = encoded[index]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        images = [features[id(prompts[i].image)] for i in chunk if prompts[i].image is not None]
        if images:
            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=images)}
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = output[:, width:]
        for row, index in enumerate(chunk):
            answers[index] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
    return answers


def image_features(loaded: LoadedModel, images: Sequence[Image.Image], batch_size: int) -> dict[int, torch.Tensor]:
    """Each distinct image's vision-tower + projector output ``[image tokens, hidden]``, keyed by ``id(image)``;
    distinct images are encoded ``batch_size`` at a time."""
    distinct = list({id(image): image for image in images}.values())
    model: nn.Module = inner_model(loaded.model)
    device, dtype = next(model.parameters()).device, model.dtype
    features: dict[int, torch.Tensor] = {}
    for start in range(0, len(distinct), batch_size):
        some = distinct[start:start + batch_size]
        pixels = preprocess_images(some, loaded.processor.image_processor, loaded.config.image_aspect)
        encoded = model.get_image_features(pixel_values=torch.from_numpy(pixels).to(device=device, dtype=dtype),
                                           return_dict=True)
        features.update(zip(map(id, some), encoded.pooler_output))
    return features
