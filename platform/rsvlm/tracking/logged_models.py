"""MLflow 3 logged models: what the experiment's **Models** tab lists and compares.

* Every checkpoint finetune or a sweep registers becomes a logged model: a pyfunc model (the checkpoint folder
  as its ``checkpoint`` artifact, ``rsvlm/eval/pyfunc_model.py`` as its code) linked to its training run
  (``source_run_id``) and carrying the model params (:func:`model_params`). The registered version is made
  from ``models:/<model_id>``, so version and logged model are one thing.
* The untrained base gets a logged model too (no artifacts: it is rebuilt from its config), so its scores sit
  beside the fine-tuned ones (:func:`untrained_model_id`).
* Evaluations log their metrics with ``model_id`` and the benchmark as a dataset
  (:func:`benchmark_dataset`: name + digest of the question file), which is how the Models tab shows each
  model's score per benchmark side by side.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import mlflow.pyfunc
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput, LoggedModelStatus
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema
from PIL import Image

from rsvlm.config.job import JobConfig
from rsvlm.config.strategy import StrategyName
from rsvlm.tracking.params import MAX_PARAM_VALUE_LENGTH, flatten_config, mask_url_credentials

# MLflow's models-from-code: the wrapper's source is named here, not imported (it lives in a higher layer,
# rsvlm.eval, and MLflow runs the copy inside the model when loading it).
PYFUNC_CODE = Path(__file__).resolve().parents[1] / "eval" / "pyfunc_model.py"
CHECKPOINT_ARTIFACT = "checkpoint"  # the checkpoint folder's key in the pyfunc model's artifacts
MODEL_TYPE = "rsvlm-vqa"
UNTRAINED_SUFFIX = "untrained"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image"), ColSpec("string", "question"),
                   ColSpec("long", "max_new_tokens", required=False)]),
    outputs=Schema([ColSpec("string")]))
# What the serving environment needs besides rsvlm itself (served with --env-manager local from rsvlm's venv).
PIP_REQUIREMENTS = ["torch", "transformers", "peft", "safetensors", "pillow", "pandas"]


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def model_params(job: JobConfig, data_fingerprint: Optional[str] = None) -> dict[str, str]:
    """The params a logged model carries: what was trained, how, on what (the compare view groups by them)."""
    strategy = job.strategy
    params: dict[str, Any] = {
        "base_model": job.model.name_or_path, "strategy": strategy.name.value, "lr": job.optim.lr,
        "global_batch_size": job.global_batch_size, "steps": job.train.max_steps, "epochs": job.train.epochs,
        "data": job.data.uri, "data_tasks": job.data.tasks or "all", "data_fingerprint": data_fingerprint,
        "init_from": job.model.init_from,
        "trainable": {"vision_tower": strategy.vision_tower, "projector": strategy.projector, "llm": strategy.llm},
    }
    if strategy.name in (StrategyName.lora, StrategyName.moe_lora):
        params |= {"rank": strategy.rank, "alpha": strategy.alpha}
    if strategy.name is StrategyName.moe_lora:
        params |= {"num_experts": strategy.num_experts, "top_k": strategy.top_k, "routing": strategy.routing}
    return flatten_config({k: v for k, v in params.items() if v is not None}, max_length=MAX_PARAM_VALUE_LENGTH)


def training_description(job: JobConfig, data_fingerprint: Optional[str] = None) -> str:
    """One paragraph for the training run's description in the MLflow UI: what was trained on what."""
    strategy = job.strategy
    how = {StrategyName.lora: f"LoRA r{strategy.rank} (alpha {strategy.alpha:g})",
           StrategyName.moe_lora: f"MoE-LoRA, {strategy.num_experts} experts sharing r{strategy.rank}, "
                                  f"{strategy.routing.value} routing",
           StrategyName.full: "Full fine-tuning", StrategyName.align: "Stage 1 (feature alignment)"}[strategy.name]
    length = f"{job.train.max_steps} steps" if job.train.max_steps else f"{job.train.epochs} epoch(s)"
    data = mask_url_credentials(job.data.uri) + (f" (sha256 {data_fingerprint[:12]})" if data_fingerprint else "")
    tasks = f", tasks {', '.join(job.data.tasks)}" if job.data.tasks else ""
    start = f" Starts from {mask_url_credentials(job.model.init_from)}." if job.model.init_from else ""
    return (f"{how} of {job.model.name_or_path} on {data}{tasks}: {length} of {job.global_batch_size} samples "
            f"at lr {job.optim.lr:g}.{start}")


def input_example() -> pd.DataFrame:
    """One row of what the model takes: a small gray PNG, base64-encoded, and a question."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")],
                         "question": ["Is there a ship in the image?"], "max_new_tokens": [8]})


def log_checkpoint_model(tracking_uri: str, run_id: str, name: str, checkpoint_dir: Path,
                         params: Mapping[str, str]) -> str:
    """Log ``checkpoint_dir`` as a pyfunc logged model of ``run_id``'s experiment; return its model id.

    The model is READY only once every file is uploaded; a failure on the way marks it FAILED.
    """
    client = _client(tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, params=dict(params),
                                       model_type=MODEL_TYPE)
    try:
        with tempfile.TemporaryDirectory(prefix="rsvlm-pyfunc-") as scratch:
            folder = Path(scratch) / "model"
            # The input example is stored, not run: predicting it would load the whole model once more.
            mlflow.pyfunc.save_model(folder, python_model=str(PYFUNC_CODE),
                                     artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_dir)}, signature=SIGNATURE,
                                     input_example=input_example(), pip_requirements=PIP_REQUIREMENTS)
            client.log_model_artifacts(model.model_id, str(folder))
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    return model.model_id


def untrained_model_id(tracking_uri: str, run_id: str, job: JobConfig) -> str:
    """The logged model standing for ``job.model`` untrained in ``run_id``'s experiment (found, else created):
    the baseline row of the Models tab."""
    client = _client(tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    name = f"rsvlm-{job.model.name}-{UNTRAINED_SUFFIX}"
    escaped = name.replace("'", "\\'")
    found = client.search_logged_models([experiment_id], filter_string=f"name = '{escaped}'", max_results=1)
    if found:
        return found[0].model_id
    params = flatten_config({"base_model": job.model.name_or_path, "strategy": "none",
                             "init_seed": job.model.init_seed}, max_length=MAX_PARAM_VALUE_LENGTH)
    model = client.create_logged_model(experiment_id, name=name, params=params, model_type=MODEL_TYPE)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def benchmark_dataset(name: str, questions_uri: str, questions_text: str) -> Dataset:
    """The benchmark as an MLflow dataset: its name and a digest of its question file's bytes."""
    digest = hashlib.sha256(questions_text.encode("utf-8")).hexdigest()[:16]
    return Dataset(name=name, digest=digest, source_type="local" if "://" not in questions_uri else
                   questions_uri.split("://", 1)[0], source=json.dumps({"uri": questions_uri}))


def log_model_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], model_id: Optional[str],
                      dataset: Dataset) -> None:
    """Log evaluation ``metrics`` on the run, each tied to the logged model and the benchmark dataset, so the
    Models tab shows them per model and per benchmark (and ``search_logged_models(datasets=…)`` finds them)."""
    client = _client(tracking_uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=0, model_id=model_id, dataset_name=dataset.name,
                          dataset_digest=dataset.digest)


def log_evaluation_inputs(tracking_uri: str, run_id: str, dataset: Dataset, model_id: Optional[str]) -> None:
    """Record on the evaluation run which benchmark it read and which logged model it scored."""
    _client(tracking_uri).log_inputs(
        run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "evaluation")])],
        models=[LoggedModelInput(model_id)] if model_id else None)
