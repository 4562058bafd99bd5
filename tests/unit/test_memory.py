"""Training-memory estimate (hand-computed on the tiny model, sane for a 7B LLaVA) and gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from rsvlm.config import compose, from_dict
from rsvlm.config.strategy import StrategyConfig
from rsvlm.model.build import load_model
from rsvlm.model.memory import (
    GIB,
    enable_gradient_checkpointing,
    estimate_training_memory,
    layer_activation_bytes,
    trainable_parameter_report,
)
from rsvlm.model.parts import model_parts
from rsvlm.model.parts import trainable_parameter_counts
from rsvlm.strategies import build_strategy
from support import llava_batch as batch

# The tiny model's defaults (TinyModelConfig), float32: 4 bytes per element.
S, B = 64, 2  # sequence, micro-batch
H, A, L, VOCAB = 96, 4, 4, 1024  # LLM hidden, heads, layers, vocabulary
# 34·s·b·h + 5·a·s²·b = 417,792 + 163,840 = 581,632 16-bit bytes; float32 doubles it.
LLM_LAYER = 2 * (34 * S * B * H + 5 * A * S * S * B)
assert LLM_LAYER == 1_163_264
LOGITS = S * B * VOCAB * 4  # 524,288
# Vision tower: (64/16)² + 1 = 17 tokens, hidden 64, 4 heads, 2 layers: (73,984 + 11,560) · 2 per layer.
VISION_LAYER = 2 * (34 * 17 * B * 64 + 5 * 4 * 17 * 17 * B)
assert VISION_LAYER == 171_088


def _applied(*overrides: str, seed: int = 1):
    job = compose(["workdir=unused", "strategy.rank=8", "strategy.alpha=16", *overrides])
    loaded = load_model(job.model)
    torch.manual_seed(seed)  # peft draws lora_A at random
    return job, loaded, build_strategy(job.strategy).apply(loaded.model)


def _estimate(model, checkpointing=False):
    return estimate_training_memory(model, micro_batch_size=B, seq_len=S, gradient_checkpointing=checkpointing)


def test_full_fine_tuning_by_hand():
    _, _, model = _applied("strategy=full")
    estimate = _estimate(model)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    assert estimate.weights == sum(p.numel() for p in params) * 4
    assert estimate.gradients == sum(p.numel() for p in trainable) * 4
    assert estimate.optimizer == 8 * sum(p.numel() for p in trainable)  # two float32 moments
    # The vision tower is frozen: it keeps nothing for the backward pass.
    assert estimate.activation_parts == {"llm": L * LLM_LAYER, "vision_tower": 0, "logits": LOGITS}
    assert estimate.activations == 4 * 1_163_264 + 524_288
    assert estimate.total == estimate.weights + estimate.gradients + estimate.optimizer + estimate.activations


def test_gradient_checkpointing_keeps_layer_inputs_and_one_layer():
    _, _, model = _applied("strategy=full")
    plain, checkpointed = _estimate(model), _estimate(model, checkpointing=True)
    # Each layer keeps its input, 2·s·b·h 16-bit bytes (doubled for float32), and one layer is recomputed.
    assert checkpointed.activation_parts["llm"] == L * S * B * H * 4 + LLM_LAYER == 196_608 + 1_163_264
    assert checkpointed.activations < plain.activations
    assert (checkpointed.weights, checkpointed.gradients, checkpointed.optimizer) == (
        plain.weights, plain.gradients, plain.optimizer)


def test_a_trained_vision_tower_adds_its_own_layers():
    _, _, model = _applied("strategy=full", "strategy.vision_tower=full")
    assert _estimate(model).activation_parts["vision_tower"] == 2 * VISION_LAYER == 342_176
    assert _estimate(model, True).activation_parts["vision_tower"] == 2 * 17 * B * 64 * 4


def test_bfloat16_uses_the_16_bit_formula():
    _, _, model = _applied("strategy=full", "model.dtype=bfloat16")
    estimate = _estimate(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate.weights == sum(p.numel() for p in model.parameters()) * 2
    # torch's AdamW keeps its two moments in the parameter's dtype; rsvlm has no float32 master weights.
    assert estimate.gradients == 2 * trainable and estimate.optimizer == 4 * trainable
    assert estimate.activation_parts["llm"] == L * LLM_LAYER // 2
    assert layer_activation_bytes(S, B, H, A) == 34 * S * B * H + 5 * A * S * S * B


def test_lora_needs_less_than_full():
    _, _, full = _applied("strategy=full")
    _, _, lora = _applied()
    full_estimate, lora_estimate = _estimate(full), _estimate(lora)
    trainable = sum(c["trainable"] for c in trainable_parameter_counts(lora).values())
    assert lora_estimate.optimizer == 8 * trainable
    assert lora_estimate.gradients < full_estimate.gradients
    assert lora_estimate.total < full_estimate.total


def test_report_and_lines():
    _, _, model = _applied()
    report = trainable_parameter_report(model)
    counts = trainable_parameter_counts(model)
    assert report[0].startswith("trainable parameters: ")
    assert [line.split()[0] for line in report[1:]] == ["vision_tower", "projector", "llm"]
    assert f"{counts['llm']['trainable']:,} / {counts['llm']['total']:,}" in report[3]
    lines = _estimate(model).lines()
    assert lines[0].startswith("memory estimate per GPU") and all("GiB" in line for line in lines)
    assert [line.split()[0] for line in lines[1:]] == ["weights", "gradients", "optimizer", "activations"]


def llava_7b_config() -> LlavaConfig:
    """LLaVA-1.5-7B's shapes: Llama-2-7B with LLaVA's 32064-token vocabulary and CLIP ViT-L/14 at 336 px."""
    text = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       intermediate_size=11008, vocab_size=32064)
    vision = CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                              image_size=336, patch_size=14, projection_dim=768)
    return LlavaConfig(text_config=text, vision_config=vision, vision_feature_layer=-2,
                       vision_feature_select_strategy="default")


def test_llava_7b_full_fine_tuning_in_bf16_is_in_a_sane_range():
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_7b_config()).to(torch.bfloat16)
    config = from_dict({"name": "full", "vision_tower": "frozen", "projector": "full", "llm": "full"}, StrategyConfig)
    model = build_strategy(config).apply(model)
    estimate = estimate_training_memory(model, micro_batch_size=1, seq_len=2048, gradient_checkpointing=False)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 7.0e9 < parameters < 7.1e9 and 6.7e9 < trainable < 6.8e9  # the vision tower's 0.3 B stay frozen
    assert 13.5e9 < estimate.weights < 14.5e9  # ≈ 14 GB of bf16 weights
    assert estimate.gradients == 2 * trainable and estimate.optimizer == 4 * trainable  # bf16 moments
    # 32 layers · 2048·4096·(34 + 5·32·2048/4096) bytes ≈ 30.6 GB, plus 0.26 GB of float32 logits.
    assert 30e9 < estimate.activations < 31.5e9
    # ≈ 13.2 GiB weights + 12.6 gradients + 25.2 AdamW + 28.7 activations
    assert 75 < estimate.total / GIB < 85
    checkpointed = estimate_training_memory(model, micro_batch_size=1, seq_len=2048, gradient_checkpointing=True)
    assert checkpointed.activations < 2.5e9 and checkpointed.total < estimate.total - 25 * GIB


def _one_step(model, inputs, seed=0):
    """Loss and gradients of one training forward/backward."""
    model.train()
    torch.manual_seed(seed)  # the same dropout masks with and without checkpointing
    loss = model(**inputs).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("strategy", [["strategy=full"], [], ["strategy=full", "strategy.vision_tower=full"]],
                         ids=["full", "lora", "full-with-vision-tower"])
def test_gradient_checkpointing_computes_the_same_step(strategy):
    _, loaded, plain = _applied(*strategy)
    _, _, checkpointed = _applied(*strategy)
    enable_gradient_checkpointing(checkpointed)
    attention = [m for name, m in checkpointed.named_modules() if name.endswith("language_model.layers.0.self_attn")]
    calls = []
    attention[0].register_forward_hook(lambda *_: calls.append(1))
    inputs = batch(loaded)

    expected_loss, expected = _one_step(plain, inputs)
    loss, grads = _one_step(checkpointed, inputs)
    assert len(calls) == 2  # the layer ran again in the backward pass
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=0)
    assert grads.keys() == expected.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=0, msg=name)


def test_a_frozen_vision_tower_stays_out_of_the_graph_under_checkpointing():
    """transformers hooks the patch embedding too; a frozen tower must not record its forward pass for nothing."""
    _, loaded, model = _applied()
    enable_gradient_checkpointing(model)
    (_, tower), = model_parts(model)["vision_tower"]
    recorded = []
    tower.register_forward_hook(lambda module, args, output: recorded.append(output.last_hidden_state.requires_grad))
    model.train()
    model(**batch(loaded)).loss.backward()
    assert recorded == [False]
    assert all(p.grad is not None for name, p in model.named_parameters() if "lora_B" in name)  # adapters still learn
