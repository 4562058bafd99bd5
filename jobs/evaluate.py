"""Evaluate a model on a benchmark: greedy answers, predictions JSONL, metrics JSON, an MLflow eval run.

Local:
    python jobs/evaluate.py model_uri=models:/rsvlm-tiny-lora@candidate benchmark=synthetic
    python jobs/evaluate.py model_uri=runs/ray_results/<run>/checkpoint_…   # a checkpoint folder
    python jobs/evaluate.py model_uri=base                                  # the untrained model
    python jobs/evaluate.py benchmark=fitrsrc predictions=answers.jsonl     # score a published answer file
        (joined to the benchmark's questions by (category, question_id); scored only on the benchmark's
        ground truth; never written on a model version, so it cannot promote anything)
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/evaluate.py model_uri=models:/rsvlm-tiny-lora@candidate tracking=server
"""

from __future__ import annotations

import json

from rsvlm.config import ConfigError, JobConfig, hydra_main
from rsvlm.errors import JobError
from rsvlm.eval.evaluate import Evaluation, evaluate_model, evaluate_predictions


def run(job: JobConfig) -> Evaluation:
    """Evaluate ``job.model_uri`` (default: the registered model's ``tracking.alias``), or score the answer
    file ``benchmark.predictions`` when one is given."""
    if job.benchmark.predictions:
        if job.model_uri:
            # An answer file's score is never attributed to a model (it could then promote one).
            raise JobError("model_uri", f"given together with predictions={job.benchmark.predictions}: an answer "
                                        "file is scored on its own, without a model",
                           "drop model_uri= to score the file, or drop predictions= to evaluate the model")
        evaluation = evaluate_predictions(job)
        source = job.benchmark.predictions
    else:
        source = job.target_model_uri
        if source.startswith("models:/") and not job.tracking.enabled:
            raise ConfigError("model_uri", "a models:/ URI needs tracking.enabled=true", None)
        evaluation = evaluate_model(job, source)
    print(json.dumps({"model": source, "benchmark": job.benchmark.name, **evaluation.metrics}, indent=2))
    print(f"predictions: {evaluation.predictions_path}")
    return evaluation


main = hydra_main(run, shorthands={"predictions": "benchmark.predictions"})

if __name__ == "__main__":
    main()
