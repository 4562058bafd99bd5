"""Sweep fine-tuning settings with Ray Tune: each trial a Ray Train run, all in one MLflow parent run.

The best trial's checkpoint is registered as `candidate`; the parent run keeps a results table and a plot.
Running the same sweep.name again resumes an interrupted sweep.

Local:
    python jobs/sweep.py sweep=smoke workdir=runs/smoke tracking.uri=sqlite:///runs/smoke/mlflow.db
    python jobs/sweep.py sweep=smoke 'sweep.space.optim.lr={loguniform:[1e-3,1e-2]}' sweep.search=random \
        sweep.num_samples=4 sweep.name=lr-search
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/sweep.py sweep=paper data.uri=s3://bucket/prepared/rs_gpt4v storage=s3 tracking=server
"""

from __future__ import annotations

import sys

from rsvlm.config import JobConfig, hydra_main
from rsvlm.tune.sweep import SweepInterruptedError, SweepResult, run_sweep


def run(job: JobConfig) -> SweepResult:
    """Run (or resume) ``job.sweep`` and print the trials and the registered winner."""
    try:
        result = run_sweep(job)
    except SweepInterruptedError as interrupted:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    if result.best is None:
        print(f"sweep {result.name}: no trial trained to the end; nothing registered", file=sys.stderr)
        sys.exit(1)
    print(f"best trial {result.best.trial_id}: {job.sweep.metric}={result.best.metric:.4g} "
          f"({', '.join(f'{k}={v}' for k, v in result.best.values.items())})")
    if result.version:
        print(f"registered: {result.registered_model} version {result.version} alias @{job.tracking.alias} "
              f"(MLflow run {result.best.run_id}, parent {result.parent_run_id})")
    print(f"results: {result.results_uri}")
    return result


main = hydra_main(run)

if __name__ == "__main__":
    main()
