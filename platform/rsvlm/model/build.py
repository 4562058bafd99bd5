"""Load a vision-language model and its processor: ``tiny`` (built in-process) or a hub id / local folder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rsvlm.config.schema import AttentionImplementation, DType, ModelConfig

TORCH_DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    processor: object  # a transformers processor: .tokenizer and .image_processor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_count(self) -> int:
        return image_token_count(self.model.config)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """The untrained base model named by ``cfg`` (``tiny``, e.g. ``llava-hf/llava-1.5-7b-hf``, or a folder)."""
    if cfg.name_or_path == "tiny":
        from rsvlm.model.tiny import build_tiny_llava

        model, processor = build_tiny_llava(cfg.tiny, cfg.init_seed)
        model.set_attn_implementation(cfg.attn_implementation.value)
        return LoadedModel(model.to(TORCH_DTYPES[cfg.dtype]), processor)
    return load_pretrained(cfg.name_or_path, cfg.dtype, cfg.attn_implementation)


def load_pretrained(name_or_path: str, dtype: DType = DType.float32,
                    attn_implementation: AttentionImplementation = AttentionImplementation.sdpa) -> LoadedModel:
    """A saved LLaVA-family model and processor (``AutoModelForImageTextToText``), from the hub or a folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path)
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=TORCH_DTYPES[dtype],
                                                        attn_implementation=attn_implementation.value)
    return LoadedModel(model, processor)


def image_token_count(config) -> int:
    """How many ``<image>`` tokens one image expands to in the prompt (the vision tower's patch features).

    With the ``default`` feature strategy LLaVA drops CLIP's class token, leaving one token per patch.
    """
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches if config.vision_feature_select_strategy == "default" else patches + 1


def load_processor(cfg: ModelConfig) -> tuple[object, int]:
    """The processor of the model named by ``cfg`` and its image-token count, without loading weights."""
    if cfg.name_or_path == "tiny":
        loaded = load_model(cfg)
        return loaded.processor, loaded.image_token_count
    from transformers import AutoConfig, AutoProcessor

    return AutoProcessor.from_pretrained(cfg.name_or_path), image_token_count(AutoConfig.from_pretrained(cfg.name_or_path))
