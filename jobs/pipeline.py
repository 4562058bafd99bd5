"""The whole pipeline on one config: prepare_data → align → finetune → evaluate → register (`make demo`).

Stage 1 (align: the projector, and the tiny model's vision tower, on captions) runs first unless
`align.enabled=false`; stage 2 fine-tunes with the configured strategy from its weights. It also evaluates
the untrained model, a blind baseline (the most frequent answer per question type, no image) and the
shuffled-image control (the fine-tuned model asked about other questions' images) on the same benchmark,
and writes `<workdir>/demo_summary.json`.

Local:
    python jobs/pipeline.py                                  # embedded default: synthetic data, tiny model, LoRA
    python jobs/pipeline.py strategy=full data.synthetic.seed=1
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/pipeline.py tracking=server
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import evaluate
import finetune
import prepare_data
import register

from rsvlm.config import JobConfig, hydra_main
from rsvlm.eval.evaluate import BASE_MODEL, evaluate_blind_baseline, evaluate_model
from rsvlm.tracking.runs import experiment_ui_url
from rsvlm.train.stages import alignment_job, instruction_job


def run(job: JobConfig) -> dict:
    """Run every stage and return the summary that is also written to ``<workdir>/demo_summary.json``."""
    started = time.perf_counter()
    prepare_data.run(job)
    aligned = finetune.run(alignment_job(job)) if job.align.enabled else None
    # Stage 2 names its stage-1 model by its registered version when there is one (its logged model's params
    # then say which model it grew from); else by the checkpoint folder.
    stage1 = (f"models:/{aligned.registered_model}/{aligned.version}" if aligned and aligned.version
              else aligned.checkpoint_uri if aligned else None)
    stage2 = instruction_job(job, stage1) if stage1 else job
    trained = finetune.run(stage2)
    baseline = evaluate_model(job, BASE_MODEL, label="untrained-baseline")
    blind = evaluate_blind_baseline(job)
    model_uri = (f"models:/{trained.registered_model}@{job.tracking.alias}" if trained.version
                 else trained.checkpoint_uri)
    tuned = evaluate.run(dataclasses.replace(stage2, model_uri=model_uri))
    # The same model asked about other questions' images: it must fall to about the blind baseline.
    shuffled = evaluate_model(stage2, model_uri, label="shuffled-images", shuffle_images_seed=job.train.seed)
    promotion = register.run(stage2) if trained.version else None
    summary = {
        "registered_model": trained.registered_model,
        "alias": job.tracking.alias,
        "version": trained.version,
        "champion": promotion.champion_version if promotion else None,
        "align_checkpoint": aligned.checkpoint_uri if aligned else None,
        "metrics": tuned.metrics,
        "baseline_metrics": baseline.metrics,
        "blind_baseline_metrics": blind.metrics,
        "shuffled_image_metrics": shuffled.metrics,
        "align": aligned.metrics if aligned else None,
        "train": trained.metrics,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = Path(job.workdir) / "demo_summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(job, summary, path)
    return summary


def _print_summary(job: JobConfig, summary: dict, path: Path) -> None:
    print("\n=== rsvlm demo summary ===")
    keys = sorted(set(summary["metrics"]) | set(summary["baseline_metrics"]))
    print(f"{'metric':34s} {'fine-tuned':>10s} {'untrained':>10s} {'blind':>10s} {'shuffled':>10s}")
    for key in keys:
        row = [summary[part].get(key) for part in ("metrics", "baseline_metrics", "blind_baseline_metrics",
                                                   "shuffled_image_metrics")]
        print(f"{key:34s} " + " ".join(f"{v:10.3f}" if v is not None else f"{'-':>10s}" for v in row))
    if summary["version"]:
        print(f"registered {summary['registered_model']} v{summary['version']} @{summary['alias']}")
    print(f"wall time {summary['wall_s']} s; summary written to {path}")
    if job.tracking.uri.startswith("sqlite:///"):
        print(f"open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {job.tracking.uri}  "
              f"→ {experiment_ui_url(job.tracking, 'http://127.0.0.1:5000', 'models')}")


main = hydra_main(run)

if __name__ == "__main__":
    main()
