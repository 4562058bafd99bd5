"""Model settings (``model`` group): which vision-language model, its dtype, attention kernels and image
handling, and the dimensions of the built-in tiny model."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from rsvlm.config.checks import require


class DType(Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class AttentionImplementation(Enum):
    """transformers' attention kernels: ``sdpa`` (torch's fused scaled-dot-product) or the plain ``eager``."""

    sdpa = "sdpa"
    eager = "eager"


class ChatTemplateName(Enum):
    """The conversation format prompts are written in (``rsvlm.data.template.CHAT_TEMPLATES``).

    ``vicuna_v1`` is LLaVA-1.5's (``USER: … ASSISTANT: …``), which its checkpoints were instruction-tuned with.
    """

    vicuna_v1 = "vicuna_v1"


class ImageAspect(Enum):
    """LLaVA-1.5's ``pad`` expands to a square filled with the processor's mean colour; ``resize`` squashes."""

    pad = "pad"
    resize = "resize"


@dataclass
class TinyModelConfig:
    """Dimensions of the in-process tiny LLaVA used by the demo and tests (no download)."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden_size: int = 96
    # Four layers, not two: with two the LLM did not learn to read the image tokens within the demo's budget.
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate_size: int = 192
    vocab_size: int = 1024
    max_position_embeddings: int = 512
    # LoRA keeps lm_head and the final norm frozen. At Llama's default init (0.02) the largest logit a
    # frozen random head can reach is about hidden_size * 0.02 ≈ 2, so p(answer) is capped near 1% and LoRA
    # plateaus at loss ≈ 5; a pretrained head has no such cap. A larger init makes the tiny stand-in behave.
    initializer_range: float = 0.1

    def __post_init__(self) -> None:
        require(self.image_size % self.patch_size == 0, "model.tiny.image_size", "must be a multiple of patch_size")
        require(self.text_hidden_size % self.text_heads == 0, "model.tiny.text_hidden_size", "must divide by text_heads")
        require(self.vision_hidden_size % self.vision_heads == 0, "model.tiny.vision_hidden_size",
                "must divide by vision_heads")
        require(self.vocab_size >= 300, "model.tiny.vocab_size", "must be >= 300 (256 byte tokens + specials)")


@dataclass
class ModelConfig:
    """Which vision-language model to fine-tune: ``tiny`` (built in-process) or a hub id / local folder."""

    name: str = "tiny"
    name_or_path: str = "tiny"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # The dtype weights are loaded in. Frozen weights stay in it; trainable ones are made fp32 when
    # train.mixed_precision autocasts (fp32 master weights).
    dtype: DType = DType.float32
    attn_implementation: AttentionImplementation = AttentionImplementation.sdpa
    image_aspect: ImageAspect = ImageAspect.pad
    # Recorded in every checkpoint with the rest of this config, so evaluation prompts as training did.
    chat_template: ChatTemplateName = ChatTemplateName.vicuna_v1
    # Stage-1 weights to start from (LLaVA's pretrain_mm_mlp_adapter): an align run's checkpoint, as a folder,
    # models:/<name>@<alias>, models:/<name>/<version> or models:/<model_id>. They are loaded before the strategy is applied and
    # saved inside every checkpoint of this run, so the stage-2 model is whole without them.
    init_from: Optional[str] = None
    # Seed of the tiny model's initial weights; the same seed gives the same untrained model.
    init_seed: int = 0

    def __post_init__(self) -> None:
        require(bool(self.name_or_path), "model.name_or_path", "must name 'tiny', a hub id or a folder")
        require(self.init_from is None or bool(self.init_from.strip()), "model.init_from",
                "must name an align checkpoint (folder, runs:/ or models:/ URI) or be null")

    @property
    def pretrained(self) -> bool:
        """False for the tiny model, which is built random in-process (no CLIP, no language pretraining)."""
        return self.name_or_path != "tiny"
