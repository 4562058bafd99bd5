"""MLflow 3 logged models on sqlite (no Ray): a registered checkpoint is a pyfunc logged model of its training run
with the model params, its version points at it, evaluations log their scores on it per benchmark dataset,
``mlflow.pyfunc.load_model(...).predict`` answers as ``jobs/evaluate.py`` does, and a real ``mlflow models
serve`` process on 127.0.0.1 answers ``/invocations`` the same."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from rsvlm.config import compose
from rsvlm.data.prepare import prepare_dataset
from rsvlm.data.storage import Storage
from rsvlm.dev.services import run_model_server
from rsvlm.eval.evaluate import BASE_MODEL, evaluate_model
from rsvlm.model.build import load_model
from rsvlm.strategies import build_strategy
from rsvlm.strategies.checkpoint import save_checkpoint
from rsvlm.tracking import create_run, finish_run
from rsvlm.tracking.lifecycle import register_checkpoint
from rsvlm.tracking.registry import model_id_of
from rsvlm.tracking.logged_models import model_params, training_description
from rsvlm.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

NAME = "rsvlm-tiny-lora"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A prepared synthetic dataset, a LoRA checkpoint registered from its training run, and that run's job."""
    workdir = tmp_path_factory.mktemp("logged")
    job = compose([f"workdir={workdir}", "strategy.rank=8", "strategy.alpha=16", "data.synthetic.num_train_images=8",
                   "data.synthetic.num_test_images=3", "benchmark.workers=0", "benchmark.limit=12"])
    manifest = prepare_dataset(job.data, Storage(job.storage)).manifest
    loaded = load_model(job.model)
    model = build_strategy(job.strategy).apply(loaded.model)
    with torch.no_grad():  # adapters that change the answers, so a lost adapter would show
        generator = torch.Generator().manual_seed(0)
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    # Named as Ray Train names them: MLflow copies the artifact under this name, not under "checkpoint".
    save_checkpoint(workdir / "checkpoint_step0000001", model, loaded.processor, job, {"step": 0})
    run_id = create_run(job.tracking, "train")
    version = register_checkpoint(job.tracking, Storage(job.storage), NAME, run_id, str(workdir / "checkpoint_step0000001"),
                                  model_params(job, manifest["fingerprint"]))
    finish_run(job.tracking.uri, run_id)
    return job, run_id, version, manifest


def _client(job) -> MlflowClient:
    return MlflowClient(tracking_uri=job.tracking.uri, registry_uri=job.tracking.uri)


def test_the_version_is_a_logged_model_of_its_run_with_the_model_params(registered):
    job, run_id, version, manifest = registered
    client = _client(job)
    model_version = client.get_model_version(NAME, version)
    assert model_version.source.startswith("models:/m-")  # the version is the logged model
    model = client.get_logged_model(model_id_of(model_version))
    assert (model.name, model.source_run_id, str(model.status)) == (NAME, run_id, "READY")
    assert model.params["strategy"] == "lora" and model.params["rank"] == "8" and model.params["alpha"] == "16.0"
    assert model.params["base_model"] == "tiny" and model.params["data_fingerprint"] == manifest["fingerprint"]
    assert model.params["steps"] == str(job.train.max_steps) and model.params["lr"] == str(job.optim.lr)
    experiment = client.get_experiment(model.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # the UI opens on training runs


def test_the_training_description_says_what_was_trained_on_what(registered):
    job, _, _, manifest = registered
    text = training_description(job, manifest["fingerprint"])
    assert text.startswith("LoRA r8 (alpha 16) of tiny on ") and manifest["fingerprint"][:12] in text
    assert f"{job.train.max_steps} steps of {job.global_batch_size} samples at lr {job.optim.lr:g}" in text


def test_scores_are_logged_on_the_model_per_benchmark_and_pyfunc_answers_as_evaluate(registered, monkeypatch):
    job, run_id, version, _ = registered
    # What a user's session has: MLflow's fluent API pointed at the store (rsvlm itself never uses it).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", job.tracking.uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", job.tracking.uri)
    client = _client(job)
    evaluation = evaluate_model(job, f"models:/{NAME}@candidate")
    model_id = model_id_of(client.get_model_version(NAME, version))
    assert evaluation.model_id == model_id
    eval_run = client.get_run(evaluation.run_id)
    assert eval_run.data.params["model_id"] == model_id and eval_run.data.params["model_version"] == version
    assert eval_run.data.params["benchmark.name"] == "synthetic" and eval_run.data.tags["rsvlm.training_run_id"] == run_id
    digest = eval_run.inputs.dataset_inputs[0].dataset.digest
    found = mlflow.search_logged_models(experiment_ids=[eval_run.info.experiment_id], output_format="list",
                                        datasets=[{"dataset_name": "synthetic", "dataset_digest": digest}])
    scored = {m.model_id: {metric.key: metric.value for metric in m.metrics or []} for m in found}
    assert scored[model_id]["eval/synthetic/vqa_accuracy"] == pytest.approx(evaluation.metrics["vqa_accuracy"])

    # The untrained base is a logged model of its own, scored beside it.
    base = evaluate_model(job, BASE_MODEL, label="untrained-baseline")
    assert client.get_logged_model(base.model_id).name == "rsvlm-tiny-untrained"
    assert evaluate_model(job, BASE_MODEL, label="again").model_id == base.model_id  # found, not made twice

    rows = [json.loads(line) for line in evaluation.predictions_path.read_text().splitlines()]
    image_root = Path(job.benchmark.image_root)
    frame = pd.DataFrame({
        "image": [base64.b64encode((image_root / r["image_id"]).read_bytes()).decode() for r in rows],
        "question": [r["question"] for r in rows],
        "max_new_tokens": [job.benchmark.max_new_tokens] * len(rows)})
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")
    answers = [r["answer"] for r in rows]
    assert served.predict(frame) == answers
    with pytest.raises(ValueError, match="row 0: image is neither base64"):
        served.predict(pd.DataFrame({"image": ["not an image"], "question": ["Is there a ship?"]}))

    # The same model behind `mlflow models serve`, as a user deploys the champion.
    with run_model_server(f"models:/{NAME}@candidate", job.tracking.uri, Path(job.workdir)) as url:
        body = json.dumps({"dataframe_records": frame.head(4).to_dict(orient="records")}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            assert json.loads(response.read())["predictions"] == answers[:4]
