"""Step time and peak memory of full fine-tuning, LoRA and MoE-LoRA on a CPU model where compute dominates.

    .venv/bin/python bench/strategies.py [--hidden 1024] [--layers 4] [--seq 256] [--batch 4] [--steps 6]

The model is the tiny LLaVA with a bigger LLM (hidden 1024, 4 layers, 16 heads, MLP 2816 by default) on
text-only sequences of ``--seq`` tokens, so the adapted linear layers dominate the step. Variants:

- ``full``: every LLM and projector weight trains;
- ``lora``: rank 128 on every LLM linear layer (LLaVA's recipe);
- ``moe_lora``: 4 experts sharing rank 128 (32 each), dense token routing, the batched formulation;
- ``moe_lora_loop``: the same model and weights, but each layer loops over its experts in Python, as the
  published MOELoRA code does (the reference the batched form must beat).

Each variant runs in its own process, so its peak resident memory (``ru_maxrss``) is its own. The step time
is the median over ``--steps`` optimizer steps after two warm-up steps. The variants are interleaved over
``--rounds`` rounds (each round runs every variant once, in a rotated order, each in a fresh process), so a
machine that slows down for a while slows every variant of that round, not one. Each ratio is taken within a
round; the JSON line gives its median and spread (min, max) over the rounds: ``lora_over_full``,
``moe_lora_over_lora``, ``full_over_lora``, ``moe_lora_over_loop_reference``.

Beside each measured ratio it prints the one a cost model of the same shapes predicts (``predicted``): per
layer the forward, input-gradient and weight-gradient flops of the linear layers and attention, the
adapters' and routers' flops, the LM head, and AdamW's bytes over what trains; converted to seconds with this
machine's matmul flop/s and memory bandwidth, measured by the bench at the model's shapes. It leaves out
norms, activations and other elementwise work (memory-bound, similar for every variant), so a measured
ratio far from its prediction points at overhead, not at arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from _common import every_variant, variants_or_one  # noqa: E402  (bench/ is the script's folder)

VARIANTS = ("full", "lora", "moe_lora", "moe_lora_loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    args = parser.parse_args()
    if args.variant:
        variants_or_one(__file__, args, VARIANTS, measure)
        return
    rounds = [every_variant(__file__, "--variant", VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)])
              for r in range(args.rounds)]
    step = {name: statistics.median(r[name]["median_step_s"] for r in rounds) for name in VARIANTS}
    last = rounds[-1]
    predicted = predicted_step_s(args, {name: last[name]["trainable_params"] for name in VARIANTS})
    figures = {
        "model": {"hidden": args.hidden, "layers": args.layers, "seq": args.seq, "batch": args.batch,
                  "rank": args.rank, "experts": args.experts, "threads": last["lora"]["threads"],
                  "rounds": args.rounds},
        **{f"{name}_median_step_s": round(s, 4) for name, s in step.items()},
        **{f"{name}_peak_rss_mib": last[name]["peak_rss_mib"] for name in VARIANTS},
        **{f"{name}_trainable_params": last[name]["trainable_params"] for name in VARIANTS},
        "machine": {key: round(value, 2) for key, value in predicted.pop("machine").items()},
        **{f"{name}_predicted_step_s": round(s, 4) for name, s in predicted.items()},
    }
    for ratio, (top, bottom) in RATIOS.items():
        per_round = [r[top]["median_step_s"] / r[bottom]["median_step_s"] for r in rounds]
        figures[ratio] = {"median": round(statistics.median(per_round), 3), "spread": [round(min(per_round), 3),
                          round(max(per_round), 3)], "predicted": round(predicted[top] / predicted[bottom], 3)}
    print(json.dumps(figures))


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and batch shape options (shared with bench/lora_profile.py)."""
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=128)


# Each ratio: (numerator variant, denominator variant), of step times.
RATIOS = {"lora_over_full": ("lora", "full"), "moe_lora_over_lora": ("moe_lora", "lora"),
          "full_over_lora": ("full", "lora"), "moe_lora_over_loop_reference": ("moe_lora", "moe_lora_loop")}


def predicted_step_s(args: argparse.Namespace, trainable: dict[str, int]) -> dict:
    """Each variant's step time by the cost model (module docstring), and the machine figures it used."""
    tokens, d, m, seq, rank, vocab = args.batch * args.seq, args.hidden, args.intermediate, args.seq, args.rank, 1024
    weights = 4 * d * d + 3 * d * m  # q, k, v, o; gate, up, down (Llama)
    adapter = rank * (11 * d + 3 * m)  # sum over the 7 linears of rank · (d_in + d_out)
    router = args.experts * (6 * d + m)  # sum over the 7 linears of experts · d_in
    linear, attention = 2 * tokens * weights, 4 * tokens * seq * d  # forward flops per layer
    head = 2 * tokens * d * vocab
    flop_s, bytes_s = _matmul_flop_s(tokens, d, m), _memory_bytes_s()
    optimizer_bytes = 28  # AdamW per fp32 trainable value: read param, grad, two moments; write three
    flops = {
        # forward + input gradients + weight gradients of every linear; attention backward ≈ 2× its forward
        "full": args.layers * (3 * linear + 3 * attention) + 3 * head,
        # base weights frozen: no weight gradients; adapters: forward, input and weight gradients
        "lora": args.layers * (2 * linear + 3 * attention + 3 * 2 * tokens * adapter) + 2 * head,
    }
    flops["moe_lora"] = flops["lora"] + args.layers * 3 * 2 * tokens * router
    flops["moe_lora_loop"] = flops["moe_lora"]
    seconds = {name: flops[name] / flop_s + optimizer_bytes * trainable[name] / bytes_s for name in flops}
    return {**seconds, "machine": {"matmul_gflop_s": flop_s / 1e9, "memory_gb_s": bytes_s / 1e9}}


def _matmul_flop_s(tokens: int, d: int, m: int) -> float:
    """This machine's fp32 matmul flop/s at the MLP's shape (best of a few)."""
    import torch

    a, b = torch.randn(tokens, d), torch.randn(d, m)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * tokens * d * m / best


def _memory_bytes_s() -> float:
    """This machine's memory bandwidth for an fp32 add of 32 M values (read two, write one; best of a few)."""
    import torch

    a, b, out = torch.randn(32 << 20), torch.randn(32 << 20), torch.empty(32 << 20)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        torch.add(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 3 * 4 * (32 << 20) / best


def measure(args: argparse.Namespace) -> dict:
    import torch

    from rsvlm.config.training import OptimConfig
    from rsvlm.train.optim import build_optimizer, warmup_cosine
    from rsvlm.train.step import train_step

    model, strategy, inputs = build_variant(args)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    scheduler = warmup_cosine(optimizer, 0, args.steps + 2)
    times = []
    for step in range(args.steps + 2):
        started = time.perf_counter()
        train_step(model, [(inputs, [])], optimizer, scheduler, 1.0, strategy.aux_loss)
        if step >= 2:
            times.append(time.perf_counter() - started)
    return {"median_step_s": statistics.median(times), "steps": len(times),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "threads": torch.get_num_threads()}


def build_variant(args: argparse.Namespace, dtype=None, experts: Optional[int] = None):
    """``(model, strategy, inputs)`` of ``args.variant`` at the bench's shapes: the tiny
    LLaVA with the sized LLM (in ``dtype``, default fp32) and a text-only batch of random tokens."""
    import torch

    from rsvlm.config.model import ModelConfig, TinyModelConfig
    from rsvlm.config.strategy import StrategyConfig, StrategyName, Trainability
    from rsvlm.model.build import load_model
    from rsvlm.strategies import build_strategy

    torch.manual_seed(0)
    tiny = TinyModelConfig(text_hidden_size=args.hidden, text_layers=args.layers, text_heads=args.heads,
                           text_intermediate_size=args.intermediate, max_position_embeddings=max(512, args.seq))
    model = load_model(ModelConfig(tiny=tiny)).model.to(dtype or torch.float32)
    name = StrategyName.full if args.variant == "full" else (
        StrategyName.moe_lora if args.variant.startswith("moe_lora") else StrategyName.lora)
    strategy_config = StrategyConfig(name=name, llm=Trainability.full if name is StrategyName.full else
                                     Trainability.adapter, rank=args.rank, alpha=2.0 * args.rank, dropout=0.0,
                                     num_experts=experts or args.experts, top_k=None)
    strategy = build_strategy(strategy_config)
    model = strategy.apply(model)
    if args.variant == "moe_lora_loop":
        use_expert_loop(model)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(300, tiny.vocab_size, (args.batch, args.seq), generator=generator)
    inputs = {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}
    return model, strategy, inputs


def use_expert_loop(model) -> None:
    """Swap every MoE-LoRA layer's batched forward for a loop over its experts (MOELoRA's published form)."""
    from rsvlm.strategies.moe_lora.layer import MoeLoraLinear

    for module in model.modules():
        if isinstance(module, MoeLoraLinear):
            module.forward = types.MethodType(_expert_loop_forward, module)


def _expert_loop_forward(self, x):
    """Same routing, weights and aux loss as ``MoeLoraLinear.forward``; each expert's A and B run on their own."""
    from rsvlm.strategies.moe_lora.layer import load_balancing_loss

    result = self.base_layer(x)
    probs, weights = self.route(x)
    self.aux_loss = load_balancing_loss(probs, weights, self.top_k) if self.training else None
    hidden, rank = self.lora_dropout(x), self.expert_rank
    for expert in range(self.num_experts):
        a = self.lora_A.weight[expert * rank:(expert + 1) * rank]
        b = self.lora_B.weight[:, expert * rank:(expert + 1) * rank]
        result = result + self.scaling * weights[..., expert:expert + 1].to(x.dtype) * ((hidden @ a.T) @ b.T)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
