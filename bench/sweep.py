"""Wall time of a sweep with trials side by side (the derived ``max_concurrent_trials``) against one at a time.

    .venv/bin/python bench/sweep.py [--steps 40] [--trials 4]

Both variants run the smoke sweep (``sweep=smoke``: MoE-LoRA on the tiny model and the synthetic data, a
grid over rank and experts) with the FIFO scheduler, so every trial trains all ``--steps`` steps in both and
the work is the same; ``--trials`` 2 keeps only the rank dimension. Each variant runs in its own process
with its own Ray (started before the clock) and MLflow database, on data prepared before the clock:

- ``serial``: ``sweep.max_concurrent_trials=1``;
- ``parallel``: ``sweep.max_concurrent_trials`` derived from the cluster (2 on a 2-core machine).

The time is ``run_sweep`` from call to return: Tune's start, every trial (its data pipeline, Ray Train
start, training, checkpoints, MLflow), the results table and plot, and registering the best trial. Prints
one JSON line with ``parallel_speedup`` (serial wall time over parallel wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from _common import variants_or_one  # noqa: E402  (bench/ is the script's folder)

VARIANTS = ("serial", "parallel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per trial")
    parser.add_argument("--trials", type=int, choices=(2, 4), default=4, help="trials in the grid")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    args = parser.parse_args()
    results = variants_or_one(__file__, args, VARIANTS, measure)
    if results is None:
        return
    serial, parallel = results["serial"], results["parallel"]
    print(json.dumps({
        "cores": os.cpu_count(), "trials": args.trials, "steps_per_trial": args.steps,
        "concurrent": {name: r["concurrent"] for name, r in results.items()},
        "serial_wall_s": round(serial["wall_s"], 1), "parallel_wall_s": round(parallel["wall_s"], 1),
        "ray_init_s": round(parallel["ray_init_s"], 1),
        "parallel_speedup": round(serial["wall_s"] / parallel["wall_s"], 3),
    }))


def measure(args: argparse.Namespace) -> dict:
    import ray

    from rsvlm.config import compose
    from rsvlm.data.prepare import prepared_manifest
    from rsvlm.tune.space import max_concurrent_trials, trial_count
    from rsvlm.tune.sweep import run_sweep

    with tempfile.TemporaryDirectory(prefix="rsvlm-bench-sweep-") as workdir:
        overrides = [f"workdir={workdir}", "sweep=smoke", "sweep.scheduler=fifo", f"train.max_steps={args.steps}",
                     f"train.checkpoint_every={max(1, args.steps // 4)}", "tracking.system_metrics_interval_s=0"]
        if args.trials == 2:
            overrides.append("~sweep.space.strategy.num_experts")
        if args.variant == "serial":
            overrides.append("sweep.max_concurrent_trials=1")
        job = compose(overrides)
        prepared_manifest(job.data)
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray_init_s = time.perf_counter() - started
        concurrent = max_concurrent_trials(ray.cluster_resources(), job, trial_count(job.sweep))
        started = time.perf_counter()
        result = run_sweep(job)
        wall_s = time.perf_counter() - started
        ray.shutdown()
    if len(result.trials) != args.trials or result.version is None:
        raise RuntimeError(f"the sweep ran {len(result.trials)} trials and registered {result.version}")
    return {"wall_s": wall_s, "ray_init_s": ray_init_s, "concurrent": concurrent}


if __name__ == "__main__":
    main()
