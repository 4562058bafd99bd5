"""Training GPU memory: an estimate to print before a run starts, and gradient checkpointing to lower it.

The estimate is per GPU (every data-parallel worker holds a full replica) and counts four terms, in bytes::

    weights     = Σ numel(p) · bytes(p.dtype)                 every parameter, at its own dtype
    gradients   = Σ numel(p) · bytes(p.dtype)                 trainable parameters only (grads take the param dtype)
    optimizer   = 2 · Σ numel(p) · bytes(p.dtype)             trainable only: AdamW's two moments
    activations = LLM + vision tower + logits

AdamW's moments (``exp_avg``, ``exp_avg_sq``) are created with ``torch.zeros_like(param)``, so they take the
parameter's dtype: 8 bytes per trainable parameter for float32, 4 for bfloat16. When
``train.mixed_precision`` autocasts, what trains is held in float32 (master weights,
``rsvlm.train.precision.keep_trainable_in_fp32``) and frozen weights stay in ``model.dtype``; the estimate
is made after that, from each parameter's own dtype, so it counts 4 + 4 + 8 bytes per trainable parameter
then. Without autocast a bf16 model trains in bf16, and its moments took 2 bytes each when measured on an
H100 (below).

Activations use the estimate for one transformer layer with 16-bit activations of Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models" (s = sequence, b = micro-batch,
h = hidden size, a = attention heads)::

    layer(s, b, h, a) = s·b·h·(34 + 5·a·s/h) · e/2            e = bytes per activation element

The paper's 34·sbh + 5·as²b counts 2-byte tensors plus 1-byte dropout masks; for e = 4 (float32) every term
is doubled, masks included (a slight overestimate), i.e. the 16-bit figure is scaled by e/2.

- **LLM** (``text_config``: s = ``seq_len``, the whole sequence with the image's tokens, h, a, L layers):
  ``L · layer(s, b, h, a)``. With gradient checkpointing each layer keeps only its input (``2·s·b·h · e/2``)
  and one layer is recomputed at a time: ``L · s·b·h·e + layer(s, b, h, a)``.
- **Vision tower** (``vision_config``: s_v = (image_size / patch_size)² + 1 patches and the class token,
  its own h_v, a_v, L_v; one image per sample): counted the same way, but only when some vision-tower
  parameter trains. A frozen tower fed by pixels that need no gradient builds no autograd graph and keeps
  nothing for the backward pass (:func:`enable_gradient_checkpointing` keeps it that way). With
  checkpointing, the one recomputed layer is the larger of an LLM layer and a vision layer.
- **Logits**: ``s·b·vocab·4`` (the loss is computed in float32).

It is a planning figure, not a bound. Left out: the CUDA context and allocator fragmentation, DDP's gradient
buckets, the embeddings, projector and final norm's activations, and the copies LoRA's dropout makes of
each adapted layer's input. The ``5·a·s/h`` term assumes attention scores are materialised (eager
attention); with SDPA / FlashAttention they are not, and the estimate is high by that term. The paper's
layer also assumes a GPT block (GELU MLP of 4h, no RMSNorm upcasts, no rotary copies).

Measured once with a one-off script (NVIDIA H100, torch 2.11, transformers 5.17, peft 0.21; not in CI): a
LLaVA of 1.7 B parameters (Llama 2048 hidden x 24 layers x 16 heads, intermediate 5632, CLIP-L/14-336
frozen) in bf16, micro-batch 4, sequence 1024. Tensors the forward pass left alive (saved activations and
logits) against this module's 14.4 GiB: 18.5 GiB with eager attention, 9.5 GiB with SDPA, and 24.1 GiB for
LoRA r=128 with eager attention (peft's dropout copies and, we take it, float32 copies of each adapter's
input). With gradient checkpointing the estimate is 1.44 GiB and the forward left 1.19 to 1.21 GiB, LoRA
included; the peak of a whole step was 13.4 GiB (full) and 6.75 GiB (LoRA). Weights, gradients and AdamW
state were within 3 % of the estimate. So read the activation term as within about a factor of 1.7 either
way without checkpointing (use checkpointing for long sequences), and as close with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rsvlm.model.parts import inner_model, model_parts, trainable_parameter_counts

GIB = 2**30
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, each in the parameter's dtype
LOGITS_BYTES = 4  # float32 logits for the loss


@dataclass
class MemoryEstimate:
    """Estimated training memory per GPU, in bytes (see the module docstring for the formulas)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    total: int
    # activations split into "llm", "vision_tower" and "logits"
    activation_parts: dict[str, int] = field(default_factory=dict)
    micro_batch_size: int = 0
    seq_len: int = 0
    gradient_checkpointing: bool = False

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def lines(self) -> list[str]:
        """A human-readable breakdown in GiB."""
        parts = ", ".join(f"{name.replace('_', ' ')} {_gib(n)}" for name, n in self.activation_parts.items())
        checkpointing = "on" if self.gradient_checkpointing else "off"
        return [
            f"memory estimate per GPU (micro-batch {self.micro_batch_size}, sequence {self.seq_len}, "
            f"gradient checkpointing {checkpointing}): {_gib(self.total)}",
            f"  weights      {_gib(self.weights)}",
            f"  gradients    {_gib(self.gradients)}  (trainable parameters)",
            f"  optimizer    {_gib(self.optimizer)}  (AdamW, two moments per trainable parameter, in its dtype)",
            f"  activations  {_gib(self.activations)}" + (f"  ({parts})" if parts else ""),
        ]


def estimate_training_memory(model: nn.Module, *, micro_batch_size: int, seq_len: int,
                             gradient_checkpointing: bool) -> MemoryEstimate:
    """Estimate the training memory of ``model`` as the strategy left it (``requires_grad`` set).

    Parameter counts and dtypes come from the model (a model on the ``meta`` device works); shapes from its
    LLaVA-style ``config`` (``text_config``, ``vision_config``). ``seq_len`` is the longest sequence of a
    micro-batch, image tokens included (``data.max_length``).
    """
    if micro_batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"micro_batch_size and seq_len must be > 0, got {micro_batch_size} and {seq_len}")
    weights = gradients = 0
    for parameter in model.parameters():
        size = parameter.numel() * parameter.element_size()
        weights += size
        if parameter.requires_grad:
            gradients += size

    config = inner_model(model).config
    text, vision = config.text_config, config.vision_config
    parts = model_parts(model)
    b = micro_batch_size
    llm_bytes = _activation_bytes(parts["llm"])
    llm_layer = layer_activation_bytes(seq_len, b, text.hidden_size, text.num_attention_heads, llm_bytes)
    llm_layers = text.num_hidden_layers
    vision_trains = any(p.requires_grad for _, module in parts["vision_tower"] for p in module.parameters())
    vision_layers = vision.num_hidden_layers if vision_trains else 0
    vision_seq = (vision.image_size // vision.patch_size) ** 2 + 1
    vision_bytes = _activation_bytes(parts["vision_tower"])
    vision_layer = layer_activation_bytes(vision_seq, b, vision.hidden_size, vision.num_attention_heads, vision_bytes)
    if gradient_checkpointing:
        llm = llm_layers * layer_input_bytes(seq_len, b, text.hidden_size, llm_bytes)
        vision_act = vision_layers * layer_input_bytes(vision_seq, b, vision.hidden_size, vision_bytes)
        # The backward pass recomputes one layer at a time: the largest one sets the peak.
        recomputed = max(llm_layer if llm_layers else 0, vision_layer if vision_layers else 0)
        llm += recomputed  # reported with the LLM, whose layer it is in practice
    else:
        llm = llm_layers * llm_layer
        vision_act = vision_layers * vision_layer
    logits = seq_len * b * text.vocab_size * LOGITS_BYTES
    activation_parts = {"llm": llm, "vision_tower": vision_act, "logits": logits}
    activations = sum(activation_parts.values())
    optimizer = ADAMW_MOMENTS * gradients  # the moments are shaped and typed like the gradients
    return MemoryEstimate(
        weights=weights, gradients=gradients, optimizer=optimizer, activations=activations,
        total=weights + gradients + optimizer + activations, activation_parts=activation_parts,
        micro_batch_size=micro_batch_size, seq_len=seq_len, gradient_checkpointing=gradient_checkpointing,
    )


def layer_activation_bytes(s: int, b: int, h: int, a: int, element_bytes: int = 2) -> int:
    """One transformer layer's saved activations, ``s·b·h·(34 + 5·a·s/h)`` scaled by ``element_bytes / 2``."""
    return (34 * s * b * h + 5 * a * s * s * b) * element_bytes // 2


def layer_input_bytes(s: int, b: int, h: int, element_bytes: int = 2) -> int:
    """What a checkpointed layer keeps: its input, ``2·s·b·h`` bytes at 16 bits."""
    return s * b * h * element_bytes


def trainable_parameter_report(model: nn.Module) -> list[str]:
    """Trainable / total parameters, overall and per part (vision tower, projector, LLM)."""
    counts = trainable_parameter_counts(model)
    trainable = sum(c["trainable"] for c in counts.values())
    total = sum(c["total"] for c in counts.values())
    width = max(len(part) for part in counts)
    return [f"trainable parameters: {trainable:,} of {total:,} ({_percent(trainable, total)})"] + [
        f"  {part:<{width}}  {c['trainable']:,} / {c['total']:,} ({_percent(c['trainable'], c['total'])})"
        for part, c in counts.items()
    ]


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant checkpointing).

    Call it after the strategy is applied; works on the bare model and under peft. Where the LLM's input
    embeddings are frozen (adapters, a frozen base) their output is made to require grad, so gradients
    reach every checkpointed layer even through a reentrant checkpoint. transformers hooks every input
    embedding for this, the vision tower's patch embedding included; that would make a frozen tower record
    its whole forward pass and backpropagate through it for nothing, so only the LLM's is kept.
    """
    core = inner_model(model)
    kwargs = {"use_reentrant": False}
    if hasattr(core, "activation_checkpointing_enable"):  # transformers ≥ 5 (gradient_… is its deprecated alias)
        core.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    core.disable_input_require_grads()
    embeddings = core.get_input_embeddings()
    if not any(p.requires_grad for p in embeddings.parameters()):
        core._require_grads_hooks = [embeddings.register_forward_hook(_output_requires_grad)]
    return model


def _output_requires_grad(module: nn.Module, inputs, output: torch.Tensor) -> None:
    output.requires_grad_(True)


def _activation_bytes(modules: list[tuple[str, nn.Module]]) -> int:
    """Bytes per activation element of a part: its first floating-point parameter's dtype."""
    for _, module in modules:
        for parameter in module.parameters():
            if parameter.is_floating_point():
                return parameter.element_size()
    return 2


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"
