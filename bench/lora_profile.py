"""Where a LoRA training step's time goes, against MoE-LoRA with one expert and full fine-tuning (torch profiler).

    .venv/bin/python bench/lora_profile.py [--precision bf16|bf16_autocast|fp32] [--hidden 1024] [--layers 4]

The model and batch are ``bench/strategies.py``'s (the tiny LLaVA with a hidden-1024 × 4-layer LLM, rank 128,
text-only sequences of 256 tokens, micro-batch 4), built by its ``build_variant``. Precisions:

- ``bf16``: the model in bf16, no autocast (what ``bench/gpu_train.py`` ran on the H100, issue 18);
- ``bf16_autocast``: frozen weights in bf16, what trains in fp32 under bf16 autocast (the finetune recipe's
  ``train.mixed_precision`` on a GPU, via ``rsvlm.train.precision.prepare_for_autocast``);
- ``fp32``: everything in fp32 (the CPU default).

bf16 matmuls are fast only where the hardware has them (GPUs; CPUs with AMX, e.g. Sapphire Rapids); elsewhere
the bf16 figures say little. Variants, each in its own process:

- ``full``; ``lora``: rsvlm's LoRA (peft's layer, adapters in the base model's dtype);
- ``lora_peft_default``: the same, with the adapters cast as ``get_peft_model`` casts them by default
  (``autocast_adapter_dtype=True``: bf16 adapters upcast to fp32) and peft's input casting left on under
  autocast: rsvlm's LoRA before issue 18;
- ``moe_lora_1expert``: rsvlm's batched MoE-LoRA layer with one expert of rank 128 (exactly a LoRA, tested);

Each variant takes ``--steps`` timed steps after two warm-up steps (median reported), then one profiled step.
Prints one JSON line: per variant the median step time, and the profiled step's self CPU time and calls of
each of the ``--top`` costliest operators. ``aten::copy_`` is where dtype casts show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from _common import variants_or_one  # noqa: E402  (bench/ is the script's folder)
from strategies import add_shape_arguments, build_variant  # noqa: E402

VARIANTS = ("full", "lora", "lora_peft_default", "moe_lora_1expert")
PRECISIONS = ("bf16", "bf16_autocast", "fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16")
    add_shape_arguments(parser)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--top", type=int, default=6, help="operators listed per variant")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    args = parser.parse_args()
    results = variants_or_one(__file__, args, VARIANTS, measure)
    if results is None:
        return
    step = {name: r["median_step_s"] for name, r in results.items()}
    print(json.dumps({"precision": args.precision, "hidden": args.hidden, "layers": args.layers, "rank": args.rank,
                      **{f"{name}_step_s": round(s, 4) for name, s in step.items()},
                      "lora_over_full": round(step["lora"] / step["full"], 3),
                      "lora_peft_default_over_full": round(step["lora_peft_default"] / step["full"], 3),
                      "lora_over_moe_lora_1expert": round(step["lora"] / step["moe_lora_1expert"], 3),
                      "profiles": {name: r["profile"] for name, r in results.items()}}))


def measure(args: argparse.Namespace) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rsvlm.config.training import OptimConfig
    from rsvlm.train.optim import build_optimizer, warmup_cosine
    from rsvlm.train.precision import prepare_for_autocast
    from rsvlm.train.step import train_step

    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    model, strategy, inputs = build_variant(args, dtype=dtype, experts=1)  # only moe_lora_1expert has experts
    if args.variant == "lora_peft_default":
        model.base_model._cast_adapter_dtype("default", autocast_adapter_dtype=True)  # what get_peft_model does
    autocast = torch.bfloat16 if args.precision == "bf16_autocast" else None
    if autocast is not None:
        prepare_for_autocast(model)
        if args.variant == "lora_peft_default":
            for module in model.modules():
                module.__dict__.pop("cast_input_dtype_enabled", None)  # peft's default: cast on
    # Built after the casts: peft's replaces the adapter parameters.
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    scheduler = warmup_cosine(optimizer, 0, args.steps + 3)

    def step():
        train_step(model, [(inputs, [])], optimizer, scheduler, 1.0, strategy.aux_loss, None, autocast)

    times = []
    for index in range(args.steps + 2):
        started = time.perf_counter()
        step()
        if index >= 2:
            times.append(time.perf_counter() - started)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]
    return {"median_step_s": statistics.median(times),
            "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                                        if p.requires_grad}),
            "profile": {e.key: {"self_ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count}
                        for e in events}}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
