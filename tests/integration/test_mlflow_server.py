"""rsvlm.tracking through a real ``mlflow server`` subprocess (REST client path, not direct sqlite)."""

from __future__ import annotations

import logging

import pytest
from mlflow.tracking import MlflowClient

from rsvlm.dev.services import free_port
from support import checkpoint_folder, get_alias_version, tree_bytes

from rsvlm.config.tracking import TrackingConfig
from rsvlm.tracking import (
    MASK,
    MlflowRunLogger,
    create_run,
    finish_run,
    make_logger,
    register_model_version,
    resolve_model_uri,
)

pytestmark = pytest.mark.integration








@pytest.mark.parametrize("artifact_location", ["client", "server-default"])
def test_log_register_resolve_through_server(mlflow_server, tmp_path, monkeypatch, artifact_location):
    monkeypatch.chdir(tmp_path)
    location = str(tmp_path / "client-artifacts") if artifact_location == "client" else ""
    tracking = TrackingConfig(uri=mlflow_server, artifact_location=location, experiment=f"it-{artifact_location}")

    run_id = create_run(tracking, "server-run", tags={"job": "finetune"})
    logger = make_logger(tracking.uri, run_id, is_rank_zero=True)
    logger.log_params({"strategy": {"rank": 8}, "hub": {"token": "hf_leak"}})
    for step, loss in enumerate([3.0, 2.0, float("nan")]):
        logger.log_metrics({"train/loss": loss}, step=step)
    folder = checkpoint_folder(tmp_path / "local")
    logger.log_artifacts(folder, artifact_path="checkpoint")
    finish_run(tracking.uri, run_id)

    client = MlflowClient(tracking.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"strategy.rank": "8", "hub.token": MASK}
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history[:2]] == [3.0, 2.0]
    assert history[2].value != history[2].value  # NaN survives the REST round trip
    if location:
        assert run.info.artifact_uri.startswith((tmp_path / "client-artifacts").resolve().as_uri() + "/")
    assert not (tmp_path / "mlartifacts").exists()

    name = f"rs-tiny-{artifact_location}"
    assert register_model_version(tracking.uri, name, run_id, "checkpoint", alias="candidate") == "1"
    assert get_alias_version(tracking.uri, name, "candidate") == "1"

    resolved = resolve_model_uri(f"models:/{name}@candidate", tracking.uri, tmp_path / "download")
    assert (resolved.name, resolved.version, resolved.run_id) == (name, "1", run_id)
    assert tree_bytes(resolved.local_path) == tree_bytes(folder)

    with pytest.raises(LookupError, match="candidate"):
        resolve_model_uri(f"models:/{name}@champion", tracking.uri, tmp_path / "nowhere")


def test_metrics_are_dropped_while_server_is_down_and_resume_after(
    mlflow_server_launcher, tmp_path, monkeypatch, caplog
):
    """Server down -> one warning, metrics dropped; server back on the same address -> logging resumes."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    db = tmp_path / "mlflow.db"
    # The run exists in the database before any server serves it (created directly through sqlite).
    tracking = TrackingConfig(uri=f"sqlite:///{db}", artifact_location=str(tmp_path / "artifacts"), experiment="outage")
    run_id = create_run(tracking, "outage")

    port = free_port()
    logger = MlflowRunLogger(f"http://127.0.0.1:{port}", run_id, retry_interval_s=0)
    with caplog.at_level(logging.WARNING, logger="rsvlm.tracking"):
        logger.log_metrics({"train/loss": 9.0}, step=0)  # nobody listens: dropped
        logger.log_metrics({"train/loss": 8.0}, step=1)  # still down: dropped, no second warning
        outage_warnings = [r for r in caplog.records if r.name.startswith("rsvlm.tracking")]
        assert len(outage_warnings) == 1 and "DROPPED" in outage_warnings[0].getMessage()

        with mlflow_server_launcher(db, tmp_path / "artifacts", port=port):
            logger.log_metrics({"train/loss": 1.0}, step=2)  # back: logged
        recovery = [r for r in caplog.records if r.name.startswith("rsvlm.tracking")][1:]
        assert len(recovery) == 1 and "2 batch(es)" in recovery[0].getMessage()

    history = MlflowClient(tracking.uri).get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(2, 1.0)]  # dropped, not replayed


def test_open_run_probes_a_live_server_and_creates_the_run(mlflow_server, tmp_path, caplog):
    """The start-up probe (GET /health, no retries) lets a live server through without a warning."""
    from rsvlm.tracking import open_run
    from rsvlm.tracking.runs import probe_tracking_server

    probe_tracking_server(mlflow_server)
    tracking = TrackingConfig(uri=mlflow_server, artifact_location=str(tmp_path / "artifacts"), experiment="probe")
    with caplog.at_level(logging.WARNING, logger="rsvlm"):
        run_id = open_run(tracking, "probed", None, params={"strategy": {"rank": 8}})
    assert run_id and not [r for r in caplog.records if r.name.startswith("rsvlm")]
    assert MlflowClient(mlflow_server).get_run(run_id).data.params == {"strategy.rank": "8"}


def test_a_server_gone_after_start_up_costs_seconds_per_call_not_minutes(mlflow_server_launcher, tmp_path,
                                                                          monkeypatch):
    """With the bounded client retries rsvlm.tracking sets (``HTTP_DEFAULTS``), a call while the server is down
    fails in seconds; the run logger swallows it and training goes on."""
    import time

    from rsvlm.tracking.logger import HTTP_DEFAULTS

    for name, value in HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "mlflow.db"
    with mlflow_server_launcher(db, tmp_path / "artifacts") as uri:
        tracking = TrackingConfig(uri=uri, artifact_location=str(tmp_path / "artifacts"), experiment="gone")
        run_id = create_run(tracking, "gone")
        logger = MlflowRunLogger(uri, run_id, retry_interval_s=0)
        logger.log_metrics({"train/loss": 1.0}, step=0)
    started = time.monotonic()
    logger.log_metrics({"train/loss": 0.5}, step=1)  # the server is gone: dropped
    assert time.monotonic() - started < 30
