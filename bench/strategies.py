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
is the median over ``--steps`` optimizer steps after two warm-up steps. Prints one JSON line with
``moe_lora_over_lora``, ``full_over_lora`` and ``moe_lora_over_loop_reference`` (ratios of median step times).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from _common import variants_or_one  # noqa: E402  (bench/ is the script's folder)

VARIANTS = ("full", "lora", "moe_lora", "moe_lora_loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    args = parser.parse_args()
    results = variants_or_one(__file__, args, VARIANTS, measure)
    if results is None:
        return
    step = {name: r["median_step_s"] for name, r in results.items()}
    figures = {
        "model": {"hidden": args.hidden, "layers": args.layers, "seq": args.seq, "batch": args.batch,
                  "rank": args.rank, "experts": args.experts, "threads": results["lora"]["threads"]},
        **{f"{name}_median_step_s": round(s, 4) for name, s in step.items()},
        **{f"{name}_peak_rss_mib": r["peak_rss_mib"] for name, r in results.items()},
        **{f"{name}_trainable_params": r["trainable_params"] for name, r in results.items()},
        "moe_lora_over_lora": round(step["moe_lora"] / step["lora"], 3),
        "full_over_lora": round(step["full"] / step["lora"], 3),
        "moe_lora_over_loop_reference": round(step["moe_lora"] / step["moe_lora_loop"], 3),
    }
    print(json.dumps(figures))


def measure(args: argparse.Namespace) -> dict:
    import torch

    from rsvlm.config.model import ModelConfig, TinyModelConfig
    from rsvlm.config.strategy import StrategyConfig, StrategyName, Trainability
    from rsvlm.config.training import OptimConfig
    from rsvlm.model.build import load_model
    from rsvlm.strategies import build_strategy
    from rsvlm.train.optim import build_optimizer, warmup_cosine
    from rsvlm.train.step import train_step

    torch.manual_seed(0)
    tiny = TinyModelConfig(text_hidden_size=args.hidden, text_layers=args.layers, text_heads=args.heads,
                           text_intermediate_size=args.intermediate, max_position_embeddings=max(512, args.seq))
    model = load_model(ModelConfig(tiny=tiny)).model
    name = StrategyName.full if args.variant == "full" else (
        StrategyName.lora if args.variant == "lora" else StrategyName.moe_lora)
    strategy_config = StrategyConfig(name=name, llm=Trainability.full if name is StrategyName.full else
                                     Trainability.adapter, rank=args.rank, alpha=2.0 * args.rank, dropout=0.0,
                                     num_experts=args.experts, top_k=None)
    strategy = build_strategy(strategy_config)
    model = strategy.apply(model)
    if args.variant == "moe_lora_loop":
        use_expert_loop(model)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    scheduler = warmup_cosine(optimizer, 0, args.steps + 2)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(300, tiny.vocab_size, (args.batch, args.seq), generator=generator)
    inputs = {"input_ids": input_ids, "labels": input_ids.clone(),
              "attention_mask": torch.ones_like(input_ids)}
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
