"""Training throughput, MFU and peak memory of each strategy on a 7B-shaped LLaVA with random weights.

    python bench/gpu_train.py                      # on a GPU: LLaVA-1.5-7B shapes, bf16
    python bench/gpu_train.py --preset toy         # anywhere: a small model, to check the bench runs

The ``7b`` preset builds LLaVA-1.5-7B's shapes without downloading anything: Vicuna/Llama-2-7B (hidden
4096, 32 layers, 32 heads, MLP 11008, vocabulary 32064) behind CLIP ViT-L/14 at 336 px (hidden 1024, 24
layers) and the two-layer MLP projector. The weights are random, in bf16 on the GPU. Each strategy runs in its
own process through rsvlm's own `build_strategy`, `build_optimizer` and `train_step`:

- ``full``: projector and LLM;
- ``lora``: r=128, α=256 on every LLM linear layer, projector full;
- ``moe_lora``: 4 experts sharing r=128, dense token routing.

Every sample is one 336-px image (576 image tokens) plus text, ``--seq`` tokens in all.

Figures:

- ``tokens_per_s``: micro-batch × sequence / median step time, after warm-up;
- ``peak_memory_gib``: ``torch.cuda.max_memory_allocated``;
- ``mfu``: model FLOPs per second over the GPU's dense bf16 peak (``--peak-tflops``; H100 SXM 989).
  Model FLOPs per step:
  - LLM and projector, per token: 2·N forward + 2·N backward to the inputs + 2·N_trainable for weight
    gradients;
  - the frozen vision tower: 2·N_vision per image patch token, forward only;
  - attention scores: 4·L·s·h per token forward, twice that backward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from _common import each_in_own_process  # noqa: E402  (bench/ is the script's folder)

STRATEGIES = ("full", "lora", "moe_lora")
PRESETS = {
    # LLaVA-1.5-7B: Vicuna-7B (Llama-2 shapes) + CLIP ViT-L/14-336.
    "7b": dict(hidden=4096, layers=32, heads=32, intermediate=11008, vocab=32064, vision_hidden=1024,
               vision_layers=24, vision_heads=16, vision_intermediate=4096, image=336, patch=14, seq=2048,
               batch=4, rank=128),
    "toy": dict(hidden=128, layers=2, heads=4, intermediate=256, vocab=1024, vision_hidden=64, vision_layers=2,
                vision_heads=4, vision_intermediate=128, image=56, patch=14, seq=64, batch=2, rank=16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="7b")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, help="micro-batch (default: the preset's)")
    parser.add_argument("--seq", type=int, help="tokens per sample, image tokens included (default: the preset's)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--precision", choices=("bf16", "bf16_autocast"), default="bf16",
                        help="bf16: every weight in bf16; bf16_autocast: the finetune recipe's mixed precision "
                             "(what trains in fp32 under bf16 autocast; full fine-tuning of 7B then needs "
                             "more than one 80 GB GPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--strategy", choices=STRATEGIES, help="run one strategy in this process (internal)")
    args = parser.parse_args()
    if args.strategy:
        print(json.dumps(measure(args)))
        return
    results = each_in_own_process(__file__, "--strategy", args.strategies.split(","))
    print(json.dumps({"preset": args.preset, **results}))


def build_model(shape: dict, device, dtype):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(image_size=shape["image"], patch_size=shape["patch"], hidden_size=shape["vision_hidden"],
                              intermediate_size=shape["vision_intermediate"], num_hidden_layers=shape["vision_layers"],
                              num_attention_heads=shape["vision_heads"], projection_dim=768)
    text = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                       num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                       num_key_value_heads=shape["heads"], max_position_embeddings=4096)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=shape["vocab"] - 1,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def measure(args: argparse.Namespace) -> dict:
    import torch

    from rsvlm.config.strategy import StrategyConfig, StrategyName, Trainability
    from rsvlm.config.training import OptimConfig
    from rsvlm.model.memory import enable_gradient_checkpointing
    from rsvlm.model.parts import model_parts
    from rsvlm.strategies import build_strategy
    from rsvlm.train.optim import build_optimizer, warmup_cosine
    from rsvlm.train.precision import prepare_for_autocast
    from rsvlm.train.step import train_step

    shape = dict(PRESETS[args.preset])
    batch, seq = args.batch or shape["batch"], args.seq or shape["seq"]
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    model = build_model(shape, device, dtype)
    name = StrategyName(args.strategy)
    strategy = build_strategy(StrategyConfig(
        name=name, llm=Trainability.full if name is StrategyName.full else Trainability.adapter,
        rank=shape["rank"], alpha=2.0 * shape["rank"], dropout=0.0, num_experts=4, top_k=None))
    model = strategy.apply(model)
    autocast = torch.bfloat16 if cuda and args.precision == "bf16_autocast" else None
    if autocast is not None:
        prepare_for_autocast(model)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-5))
    scheduler = warmup_cosine(optimizer, 0, args.steps + 2)

    image_tokens = (shape["image"] // shape["patch"]) ** 2
    if seq <= image_tokens + 8:
        raise SystemExit(f"--seq {seq} leaves no room for text after {image_tokens} image tokens")
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(10, shape["vocab"] - 2, (batch, seq - image_tokens - 1), generator=generator)
    image = torch.full((batch, image_tokens), shape["vocab"] - 1)
    input_ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), image, text], dim=1).to(device)
    labels = input_ids.clone()
    labels[:, :1 + image_tokens] = -100
    inputs = {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids),
              "pixel_values": torch.randn(batch, 3, shape["image"], shape["image"], generator=generator).to(device, dtype)}

    times = []
    for step in range(args.steps + 2):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        train_step(model, [(inputs, [])], optimizer, scheduler, 1.0, strategy.aux_loss, None, autocast)
        if cuda:
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - started)
    step_s = statistics.median(times)

    parts = model_parts(model)
    count = lambda part, trainable=False: sum(p.numel() for _, m in parts[part] for p in m.parameters()  # noqa: E731
                                              if p.requires_grad or not trainable)
    llm_and_projector = count("llm") + count("projector")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = batch * seq
    flops = (4 * llm_and_projector + 2 * trainable) * tokens + 2 * count("vision_tower") * batch * (image_tokens + 1)
    flops += 3 * 4 * shape["layers"] * seq * shape["hidden"] * tokens
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype).removeprefix("torch."),
        "precision": args.precision if cuda else "fp32", "batch": batch, "seq": seq,
        "gradient_checkpointing": args.gradient_checkpointing,
        "adapter_dtype": str(next(p.dtype for p in model.parameters() if p.requires_grad)).removeprefix("torch."),
        "checkpointing_active": bool(getattr(model, "is_gradient_checkpointing", False)
                                     or any(getattr(m, "gradient_checkpointing", False) for m in model.modules())),
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "trainable_params_m": round(trainable / 1e6, 2),
        "median_step_s": round(step_s, 4), "tokens_per_s": round(tokens / step_s, 1),
        "mfu": round(flops / step_s / (args.peak_tflops * 1e12), 4) if cuda else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


if __name__ == "__main__":
    main()
