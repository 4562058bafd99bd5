"""Fine-tune a vision-language model with Ray Train; log to MLflow; register the result as `candidate`.

Local:
    python jobs/finetune.py model=tiny data=synthetic strategy=lora train.max_steps=50 workdir=runs
    python jobs/finetune.py -m strategy=lora,full          # Hydra multirun: one MLflow run each
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/finetune.py scaling=cpu2 tracking=server
"""

from __future__ import annotations

from rsvlm.config import JobConfig, hydra_main
from rsvlm.train.finetune import FinetuneResult, run_finetune


def run(job: JobConfig) -> FinetuneResult:
    """Train on ``job.data.uri`` (run prepare_data first) and print where the result went."""
    result = run_finetune(job)
    print(f"checkpoint: {result.checkpoint_uri}")
    if result.version:
        print(f"registered: {result.registered_model} version {result.version} alias @{job.tracking.alias} "
              f"(MLflow run {result.run_id})")
    return result


main = hydra_main(run)

if __name__ == "__main__":
    main()
