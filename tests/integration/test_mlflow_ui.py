"""The MLflow UI, rendered by a real (headless) browser: what a user comparing models sees.

``test_ui_contract`` builds, in a server of its own, the records rsvlm writes (an experiment tagged as model
training, training runs, two logged models with a metric per dataset) and checks how MLflow 3.17's UI shows
them: it pins the UI behaviour the pipeline test and rsvlm's links rely on, in seconds. The pipeline test
reads the session's demo run the same way and saves the Models tab as docs/mlflow-models-tab.png
(``RSVLM_UPDATE_SCREENSHOT=1`` writes it there; otherwise into the test's tmp folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from browser import (
    as_shown,
    browser_page,
    experiment_url,
    fresh_page,
    logged_model_cells,
    metric_column,
    open_page,
    rendered_text,
    screenshot,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "mlflow-models-tab.png"
EXPERIMENT = "rsvlm"  # conf/tracking/*.yaml
METRIC = "eval/synthetic/vqa_accuracy"
CANDIDATE, BASELINE = "rsvlm-tiny-lora", "rsvlm-tiny-untrained"
KIND_TAG = {"mlflow.experimentKind": "custom_model_development"}
# Only the GenAI overview (#/experiments/<id>/overview/usage) shows these.
GENAI_OVERVIEW_MARKERS = ("Token Usage", "Tool calls", "Cost Breakdown")


def assert_on_training_runs(page, text: str, run_prefixes: tuple[str, ...]) -> None:
    """The experiment page shows its runs table, with a run of each prefix, and nothing of the GenAI overview."""
    assert "/runs" in page.url, f"the experiment page opened on {page.url}, not on its runs"
    assert "Run Name" in text, text
    for prefix in run_prefixes:
        assert any(line.startswith(prefix) for line in text.splitlines()), f"no run named {prefix}…:\n{text}"
    shown = [marker for marker in GENAI_OVERVIEW_MARKERS if marker in text]
    assert not shown, f"the GenAI overview shows ({shown}):\n{text}"


def expected_metric_cells(client: MlflowClient, experiment_id: str, names: tuple[str, ...]) -> dict:
    """{model id: {metric column: value}} of the named logged models' ``METRIC``, read from the store: the
    latest value per dataset (by step, then time), as the Models tab shows it."""
    models = {m.name: m for m in client.search_logged_models([experiment_id])}
    missing = [name for name in names if name not in models]
    assert not missing, f"no logged models {missing} in experiment {experiment_id}; there are {sorted(models)}"
    expected = {}
    for name in names:
        latest = {}
        for metric in sorted((m for m in models[name].metrics or [] if m.key == METRIC),
                             key=lambda m: (m.step, m.timestamp)):
            latest[metric_column(metric.key, metric.dataset_name, metric.dataset_digest)] = metric.value
        assert latest, f"logged model {name} has no {METRIC}: {models[name].metrics}"
        expected[models[name].model_id] = latest
    return expected


def assert_models_tab(page, server_uri: str, experiment_id: str, expected: dict, names: tuple[str, ...]) -> None:
    """The Models tab lists each named model with each of its expected metric values, as the UI prints them."""
    text = open_page(page, experiment_url(server_uri, experiment_id, "models"), names[-1])
    for name in names:
        assert name in text, f"the Models tab does not list {name}:\n{text}"
    table = logged_model_cells(page)
    for model_id, metrics in expected.items():
        row = table.get(model_id)
        assert row, f"no row for logged model {model_id} in the Models tab; rows: {table}"
        for column, value in metrics.items():
            assert row.get(column) == as_shown(page, value), (
                f"{row.get('name')}: {column} shows {row.get(column)!r}, the store has {value}; row: {row}")


# ------------------------------------------------------------------------------ the UI contract, on our own data


def build_store(client: MlflowClient, experiment: str, tags: dict[str, str]) -> str:
    """Records shaped like a pipeline run's: training runs, a candidate and a baseline logged model, an eval run
    for each that logs ``METRIC`` against the model and the "synthetic" dataset. Returns the experiment id."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, LoggedModelInput

    experiment_id = client.create_experiment(experiment, tags=tags)
    train = client.create_run(experiment_id, run_name=f"{CANDIDATE}-20250101-000000-abcdef").info.run_id
    align = client.create_run(experiment_id, run_name="rsvlm-tiny-align-20250101-000000-123456").info.run_id
    for step in range(0, 20, 10):
        client.log_metric(train, "train/loss", 2.0 - step / 20, step=step)
        client.log_metric(align, "train/loss", 3.0 - step / 20, step=step)
    dataset = MetaDataset(HTTPDatasetSource("https://example.invalid/synthetic"), name="synthetic",
                          digest="5e1f0c2a")._to_mlflow_entity()
    for name, source_run, value in ((CANDIDATE, train, 0.625), (BASELINE, None, 1 / 3)):
        model = client.create_logged_model(experiment_id, name=name, source_run_id=source_run,
                                           params={"strategy": "lora" if source_run else "none"})
        client.finalize_logged_model(model.model_id, "READY")
        run = client.create_run(experiment_id, run_name=f"eval-{name}").info.run_id
        client.log_inputs(run, datasets=[DatasetInput(dataset)], models=[LoggedModelInput(model.model_id)])
        client.log_metric(run, METRIC, value, step=0, model_id=model.model_id, dataset_name=dataset.name,
                          dataset_digest=dataset.digest)
    for run in (train, align):
        client.set_terminated(run)
    return experiment_id


def test_ui_contract(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    experiment_id = build_store(client, EXPERIMENT, KIND_TAG)
    expected = expected_metric_cells(client, experiment_id, (CANDIDATE, BASELINE))
    with browser_page() as page:
        # (a) The link in the model-training workflow opens on the training runs.
        text = open_page(page, experiment_url(mlflow_server, experiment_id), "rsvlm-tiny-align-")
        assert_on_training_runs(page, text, (f"{CANDIDATE}-", "rsvlm-tiny-align-"))

        # A bare link, in a fresh browser, opens on the GenAI overview although the experiment carries the
        # model-training tag: why rsvlm's links name the workflow. When this fails, MLflow has started to follow
        # the tag (mlflow/mlflow#24498) and bare links would do.
        fresh = fresh_page(page.context.browser)
        fresh.goto(experiment_url(mlflow_server, experiment_id, workflow=""))
        fresh.get_by_text(GENAI_OVERVIEW_MARKERS[0]).first.wait_for()
        assert "/overview" in fresh.url, fresh.url
        with pytest.raises(AssertionError, match="not on its runs"):
            assert_on_training_runs(fresh, rendered_text(fresh), ())

        # (b) The Models tab lists both logged models with their metric per dataset.
        assert_models_tab(page, mlflow_server, experiment_id, expected, (CANDIDATE, BASELINE))
        assert "Dataset:\nsynthetic (#5e1f0c2a)" in rendered_text(page)  # the column group of its metrics
        assert as_shown(page, 1 / 3) in rendered_text(page)  # "0.3333333333333333": the UI does not round
        screenshot(page, tmp_path / "models-tab.png")


# ------------------------------------------------------------------------------ the session's demo pipeline run


@pytest.mark.slow
def test_pipeline_run_in_the_ui(pipeline_run, tmp_path):
    client = MlflowClient(pipeline_run.server_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no experiment {EXPERIMENT!r} on {pipeline_run.server_uri}"
    # The UI of 3.17 opens on the workflow of the link, not the tag (see test_ui_contract); the tag still says
    # what the experiment is, for the MLflow versions that follow it.
    assert experiment.tags.get("mlflow.experimentKind") == KIND_TAG["mlflow.experimentKind"], experiment.tags
    expected = expected_metric_cells(client, experiment.experiment_id, (CANDIDATE, BASELINE))
    with browser_page() as page:
        text = open_page(page, experiment_url(pipeline_run.server_uri, experiment.experiment_id), f"{CANDIDATE}-")
        assert_on_training_runs(page, text, (f"{CANDIDATE}-", "rsvlm-tiny-align-"))
        assert_models_tab(page, pipeline_run.server_uri, experiment.experiment_id, expected, (CANDIDATE, BASELINE))
        shot = screenshot(page, tmp_path / SCREENSHOT.name)
        if os.environ.get("RSVLM_UPDATE_SCREENSHOT") == "1":
            SCREENSHOT.write_bytes(shot.read_bytes())
