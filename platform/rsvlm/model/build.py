"""Load a vision-language model and its processor: ``tiny`` (built in-process) or a hub id / local folder."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from rsvlm.config.model import DType, ModelConfig
from rsvlm.data.synthetic import corpus as synthetic_corpus
from rsvlm.data.template import chat_template
from rsvlm.errors import JobError
from rsvlm.model.tiny import build_tiny_llava

TORCH_DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}
MODEL_FIX = "give a local folder with config.json or a hub id such as llava-hf/llava-1.5-7b-hf"
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def looks_like_path(name_or_path: str) -> bool:
    """Whether ``model.name_or_path`` means a folder: absolute, ``./``, ``../``, ``~``, ``.``/``..``, or a path
    that exists. Anything else is a hub id (``org/name`` or ``name``)."""
    return (name_or_path in (".", "..") or name_or_path.startswith(_PATH_PREFIXES)
            or os.path.exists(name_or_path))


def resolve_model_source(name_or_path: str) -> str:
    """What transformers should load for ``model.name_or_path``: a checked folder or a checked hub id.

    A path (:func:`looks_like_path`) must be a folder holding ``config.json``; a hub id must be well formed,
    and when the hub is offline (``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``) already in the local
    Hugging Face cache. Each failure is a :class:`~rsvlm.errors.JobError` naming the setting and the problem,
    instead of huggingface_hub's "Repo id must use alphanumeric chars" for a folder that is not there.
    """
    what = f"model.name_or_path={name_or_path}"
    if looks_like_path(name_or_path):
        folder = Path(name_or_path).expanduser()
        if not folder.exists():
            raise JobError(what, "no such folder", MODEL_FIX)
        if not folder.is_dir():
            raise JobError(what, "is a file, not a model folder", MODEL_FIX)
        if not (folder / "config.json").is_file():
            raise JobError(what, "the folder has no config.json, so it is not a saved transformers model",
                           "give the folder that save_pretrained wrote (config.json, weights, processor files), "
                           "or a hub id such as llava-hf/llava-1.5-7b-hf")
        return str(folder)
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise JobError(what, "neither an existing folder nor a hub id (org/name)", MODEL_FIX) from None
    if hub_offline() and not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        raise JobError(what, "not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it",
                       f"download it once with network access (huggingface-cli download {name_or_path}), "
                       "or give a local folder with config.json")
    return name_or_path


def hub_offline() -> bool:
    """Whether the Hugging Face hub may not be reached (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    truthy = {"1", "on", "yes", "true"}
    return bool(hub_constants.HF_HUB_OFFLINE) or any(
        os.environ.get(name, "").strip().lower() in truthy for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@contextlib.contextmanager
def _loading(name_or_path: str, part: str) -> Iterator[None]:
    """transformers' errors for a model that cannot be loaded, as one JobError line naming the setting."""
    try:
        yield
    except (OSError, ValueError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise JobError(f"model.name_or_path={name_or_path}", f"cannot load its {part}: {first}", MODEL_FIX) from exc


@dataclass
class LoadedModel:
    model: nn.Module
    processor: object  # a transformers processor: .tokenizer and .image_processor
    config: ModelConfig  # what it was built from: its chat template and image handling

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_count(self) -> int:
        return image_token_count(self.model.config)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """The untrained base model named by ``cfg`` (``tiny``, e.g. ``llava-hf/llava-1.5-7b-hf``, or a folder)."""
    if not cfg.pretrained:
        model, processor = build_tiny_llava(cfg.tiny, cfg.init_seed, tiny_tokenizer_corpus(cfg))
        model.set_attn_implementation(cfg.attn_implementation.value)
        return LoadedModel(model.to(TORCH_DTYPES[cfg.dtype]), processor, cfg)
    return load_pretrained(cfg)


def tiny_tokenizer_corpus(cfg: ModelConfig) -> list[str]:
    """What the tiny model's tokenizer learns from: the synthetic generator's phrases and the chat template's."""
    template = chat_template(cfg.chat_template)
    return [template.system, f"{template.roles[0]}: ", f" {template.roles[1]}:", *synthetic_corpus()]


def load_pretrained(cfg: ModelConfig) -> LoadedModel:
    """A saved LLaVA-family model and processor (``AutoModelForImageTextToText``), from the hub or a folder.

    ``cfg.name_or_path`` is checked first (:func:`resolve_model_source`); a missing folder, a folder without
    config.json, a malformed hub id or an uncached id while offline is a one-line JobError.
    """
    name_or_path = cfg.name_or_path
    source = resolve_model_source(name_or_path)
    with _loading(name_or_path, "processor"):
        processor = AutoProcessor.from_pretrained(source)
    with _loading(name_or_path, "weights"):
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=TORCH_DTYPES[cfg.dtype],
                                                            attn_implementation=cfg.attn_implementation.value)
    return LoadedModel(model, processor, cfg)


def image_token_count(config) -> int:
    """How many ``<image>`` tokens one image expands to in the prompt (the vision tower's patch features).

    With the ``default`` feature strategy LLaVA drops CLIP's class token, leaving one token per patch.
    """
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches if config.vision_feature_select_strategy == "default" else patches + 1


def load_processor(cfg: ModelConfig) -> tuple[object, int]:
    """The processor of the model named by ``cfg`` and its image-token count, without loading weights."""
    if not cfg.pretrained:
        loaded = load_model(cfg)
        return loaded.processor, loaded.image_token_count
    source = resolve_model_source(cfg.name_or_path)
    with _loading(cfg.name_or_path, "config"):
        config = AutoConfig.from_pretrained(source)
    with _loading(cfg.name_or_path, "processor"):
        processor = AutoProcessor.from_pretrained(source)
    return processor, image_token_count(config)
