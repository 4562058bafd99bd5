"""rsvlm.tracking against a real MLflow (sqlite backend, file:// artifacts, both in tmp_path); no mocks."""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rsvlm.dev.services import free_port
from support import checkpoint_folder, get_alias_version, set_alias, tree_bytes

from rsvlm.config.strategy import StrategyName
from rsvlm.config.tracking import TrackingConfig
from rsvlm.tracking import (
    MASK,
    MAX_PARAM_VALUE_LENGTH,
    TRUNCATION_MARKER,
    MlflowRunLogger,
    NullRunLogger,
    RunLogger,
    create_run,
    finish_run,
    flatten_config,
    make_logger,
    redact,
    register_model_version,
    resolve_model_uri,
)


class Color(Enum):
    red = "red"


# --------------------------------------------------------------------------------------------- params


def test_flatten_nested_keys_enums_lists_none():
    flat = flatten_config(
        {
            "strategy": {"name": StrategyName.lora, "rank": 8, "targets": ["q_proj", "v_proj"]},
            "data": {"limit": None, "shuffle": True, "colors": [Color.red]},
            "lr": 2e-5,
        }
    )
    assert flat == {
        "strategy.name": "lora",
        "strategy.rank": "8",
        "strategy.targets": '["q_proj", "v_proj"]',
        "data.limit": "None",
        "data.shuffle": "True",
        "data.colors": '["red"]',
        "lr": "2e-05",
    }
    assert json.loads(flat["strategy.targets"]) == ["q_proj", "v_proj"]


def test_flatten_masks_secret_leaf_keys_at_any_depth_case_insensitively():
    flat = flatten_config(
        {
            "storage": {
                "s3": {"AWS_SECRET_ACCESS_KEY": "wJalrXUt", "access_key_id": "AKIA123", "bucket": "rs"},
                "db": {"Password": "hunter2", "passwd": "x", "user": "me"},
            },
            "hub": {"hf_token": "hf_abc", "apiKey": "k1", "api_key": "k2", "credentials": {"file": "c.json"}},
            "session_key": "s",
            "client_secret": None,
            # Token *counts* and ids are not secrets and must stay readable.
            "benchmark": {"max_new_tokens": 24, "pad_token_id": 0, "tokenizer": "byte"},
        }
    )
    for key in (
        "storage.s3.AWS_SECRET_ACCESS_KEY", "storage.s3.access_key_id", "storage.db.Password",
        "storage.db.passwd", "hub.hf_token", "hub.apiKey", "hub.api_key", "session_key", "client_secret",
    ):
        assert flat[key] == MASK, key
    # A secret-named section is masked whole: nothing under it is flattened out.
    assert flat["hub.credentials"] == MASK
    assert not any(key.startswith("hub.credentials.") for key in flat)
    assert flat["storage.s3.bucket"] == "rs"
    assert flat["storage.db.user"] == "me"
    assert flat["benchmark.max_new_tokens"] == "24"
    assert flat["benchmark.pad_token_id"] == "0"
    assert flat["benchmark.tokenizer"] == "byte"
    assert not any(secret in value for value in flat.values() for secret in ("wJalrXUt", "hunter2", "hf_abc"))


def test_flatten_masks_credentials_embedded_in_urls():
    flat = flatten_config(
        {
            "tracking": {"uri": "https://alice:s3cr3t@mlflow.example.com:5000/path"},
            "endpoints": ["postgresql://u:p@db:5432/x", "s3://bucket/plain"],
            "remote": "git+https://ghp_TOKEN@github.com/org/repo",
            "mail": "someone@example.com",
        }
    )
    assert flat["tracking.uri"] == "https://***@mlflow.example.com:5000/path"
    assert json.loads(flat["endpoints"]) == ["postgresql://***@db:5432/x", "s3://bucket/plain"]
    assert flat["remote"] == "git+https://***@github.com/org/repo"
    assert flat["mail"] == "someone@example.com"
    assert "s3cr3t" not in json.dumps(flat) and "ghp_TOKEN" not in json.dumps(flat)


def test_flatten_truncates_to_mlflow_param_limit_with_marker():
    assert MAX_PARAM_VALUE_LENGTH == 6000
    flat = flatten_config({"prompt": "x" * 10_000, "short": "y" * 6000})
    assert len(flat["prompt"]) == 6000
    assert flat["prompt"].endswith(TRUNCATION_MARKER)
    assert flat["short"] == "y" * 6000  # exactly at the limit: untouched


def test_redact_keeps_structure_and_masks_secrets():
    obj = {"s3": {"endpoint": "http://k:v@minio:9000", "secret_key": "abc"}, "list": [{"token": "t"}, 1]}
    assert redact(obj) == {"s3": {"endpoint": "http://***@minio:9000", "secret_key": MASK}, "list": [{"token": MASK}, 1]}


# --------------------------------------------------------------------------------------------- runs


@pytest.fixture()
def tracking(tmp_path, monkeypatch) -> TrackingConfig:
    """sqlite + file:// artifacts in tmp_path; the test runs from another directory on purpose."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return TrackingConfig(
        uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
        experiment="unit",
    )






def test_run_params_metrics_tags_roundtrip(tracking, tmp_path):
    run_id = create_run(tracking, "train", tags={"job": "finetune", "hf_token": "hf_leak"})
    logger = make_logger(tracking.uri, run_id, is_rank_zero=True)
    assert isinstance(logger, MlflowRunLogger) and isinstance(logger, RunLogger)
    assert logger.run_id == run_id

    logger.log_params({"strategy": {"rank": 8}, "s3": {"secret_key": "sk_leak"}, "prompt": "p" * 9000})
    for step, loss in enumerate([2.5, 1.5, float("nan")]):
        logger.log_metrics({"train/loss": loss, "train/lr": 1e-4}, step=step)
    logger.set_tags({"stage": "sft", "endpoint": "https://u:pw_leak@host"})
    finish_run(tracking.uri, run_id)

    client = MlflowClient(tracking.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy.rank"] == "8"
    assert run.data.params["s3.secret_key"] == MASK
    assert len(run.data.params["prompt"]) == 6000  # accepted by MLflow at exactly its limit
    assert run.data.tags["job"] == "finetune"
    assert run.data.tags["hf_token"] == MASK
    assert run.data.tags["endpoint"] == "https://***@host"
    assert run.data.tags["mlflow.runName"] == "train"
    assert "leak" not in json.dumps({**run.data.params, **run.data.tags})

    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history[:2]] == [2.5, 1.5]
    assert history[2].value != history[2].value  # NaN is logged, not silently skipped
    assert [m.step for m in client.get_metric_history(run_id, "train/lr")] == [0, 1, 2]


def test_artifacts_land_in_configured_location_not_cwd(tracking, tmp_path):
    run_id = create_run(tracking, "artifacts")
    logger = make_logger(tracking.uri, run_id, is_rank_zero=True)
    folder = checkpoint_folder(tmp_path / "local")
    logger.log_artifacts(folder, artifact_path="checkpoint")
    logger.log_dict({"model": {"name": "tiny"}, "s3": {"access_key": "AK_leak"}}, "config.json")

    run = MlflowClient(tracking.uri).get_run(run_id)
    artifact_root = (tmp_path / "artifacts").resolve()
    assert run.info.artifact_uri.startswith(artifact_root.as_uri() + "/")
    stored = Path(url2pathname(urlparse(run.info.artifact_uri).path))
    assert stored.is_relative_to(artifact_root)
    assert tree_bytes(stored / "checkpoint") == tree_bytes(folder)
    assert json.loads((stored / "config.json").read_text()) == {"model": {"name": "tiny"}, "s3": {"access_key": MASK}}
    assert not (Path.cwd() / "mlartifacts").exists()
    assert not (Path.cwd() / "mlruns").exists()


def test_parent_run_tag(tracking):
    parent = create_run(tracking, "sweep")
    child = create_run(tracking, "trial-0", parent_run_id=parent)
    assert MlflowClient(tracking.uri).get_run(child).data.tags["mlflow.parentRunId"] == parent


def test_null_logger_for_other_ranks_logs_nothing(tracking, tmp_path):
    run_id = create_run(tracking, "ranks")
    logger = make_logger(tracking.uri, run_id, is_rank_zero=False)
    assert isinstance(logger, NullRunLogger) and isinstance(logger, RunLogger)
    assert logger.run_id is None
    logger.log_params({"a": 1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_artifacts(checkpoint_folder(tmp_path / "local"), "checkpoint")
    logger.log_dict({"a": 1}, "a.json")
    logger.set_tags({"t": "v"})

    client = MlflowClient(tracking.uri)
    run = client.get_run(run_id)
    assert run.data.params == {} and run.data.metrics == {}
    assert "t" not in run.data.tags
    assert client.list_artifacts(run_id) == []
    assert isinstance(make_logger(tracking.uri, None, is_rank_zero=True), NullRunLogger)


def test_caller_errors_still_raise(tracking):
    # Only an unreachable/failing server is survived; an unknown run id is a bug and must surface.
    create_run(tracking, "exists")
    with pytest.raises(MlflowException):
        MlflowRunLogger(tracking.uri, "0" * 32).log_metrics({"loss": 1.0}, step=0)


def test_create_run_refuses_disabled_tracking(tracking):
    tracking.enabled = False
    with pytest.raises(ValueError, match="enabled"):
        create_run(tracking, "nope")


# --------------------------------------------------------------------------------------------- registry


def test_register_and_resolve_roundtrip(tracking, tmp_path):
    run_id = create_run(tracking, "register")
    folder = checkpoint_folder(tmp_path / "local")
    make_logger(tracking.uri, run_id, True).log_artifacts(folder, artifact_path="checkpoint")

    version = register_model_version(tracking.uri, "rs-tiny", run_id, "checkpoint", alias="candidate")
    assert version == "1"
    assert get_alias_version(tracking.uri, "rs-tiny", "candidate") == "1"
    assert get_alias_version(tracking.uri, "rs-tiny", "champion") is None
    assert get_alias_version(tracking.uri, "no-such-model", "candidate") is None

    expected = tree_bytes(folder)
    for i, uri in enumerate(["models:/rs-tiny@candidate", "models:/rs-tiny/1", f"runs:/{run_id}/checkpoint"]):
        dst = tmp_path / f"download-{i}"
        resolved = resolve_model_uri(uri, tracking.uri, dst)
        assert resolved.local_path.is_dir()
        assert resolved.local_path.resolve().is_relative_to(dst.resolve()), uri
        assert tree_bytes(resolved.local_path) == expected, uri
        assert resolved.run_id == run_id
        if uri.startswith("models:/"):
            assert (resolved.name, resolved.version) == ("rs-tiny", "1")
        else:
            assert (resolved.name, resolved.version) == (None, None)

    # A second registration is a new version; the alias moves to it.
    assert register_model_version(tracking.uri, "rs-tiny", run_id, "checkpoint", alias="candidate") == "2"
    assert get_alias_version(tracking.uri, "rs-tiny", "candidate") == "2"
    set_alias(tracking.uri, "rs-tiny", "champion", "1")
    assert resolve_model_uri("models:/rs-tiny@champion", tracking.uri, tmp_path / "dl-champion").version == "1"


def test_resolve_local_folder_and_file_uri_are_not_copied(tracking, tmp_path):
    folder = checkpoint_folder(tmp_path / "local")
    dst = tmp_path / "dst"
    for uri in (str(folder), folder.as_uri()):
        resolved = resolve_model_uri(uri, tracking.uri, dst)
        assert resolved.local_path == folder.resolve()
        assert (resolved.name, resolved.version, resolved.run_id) == (None, None, None)
    assert not dst.exists()
    with pytest.raises(FileNotFoundError):
        resolve_model_uri(str(tmp_path / "missing"), tracking.uri, dst)


def test_unknown_alias_version_or_model_is_a_lookup_error_naming_what_exists(tracking, tmp_path):
    run_id = create_run(tracking, "lookup")
    make_logger(tracking.uri, run_id, True).log_artifacts(checkpoint_folder(tmp_path / "local"), "checkpoint")
    register_model_version(tracking.uri, "rs-tiny", run_id, "checkpoint", alias="candidate")

    with pytest.raises(LookupError) as alias_err:
        resolve_model_uri("models:/rs-tiny@champion", tracking.uri, tmp_path / "dl")
    message = str(alias_err.value)
    assert "rs-tiny" in message and "champion" in message and "candidate" in message

    with pytest.raises(LookupError) as version_err:
        resolve_model_uri("models:/rs-tiny/9", tracking.uri, tmp_path / "dl")
    assert "'9'" in str(version_err.value) and "['1']" in str(version_err.value)

    with pytest.raises(LookupError, match="no-such-model.*rs-tiny"):
        resolve_model_uri("models:/no-such-model@candidate", tracking.uri, tmp_path / "dl")


def test_register_refuses_a_path_the_run_never_logged(tracking):
    run_id = create_run(tracking, "empty")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        register_model_version(tracking.uri, "rs-tiny", run_id, "checkpoint", alias="candidate")


# --------------------------------------------------------------------------------------------- outage



def test_unreachable_server_warns_once_and_does_not_raise(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://user:pw_leak@127.0.0.1:{free_port()}"
    # retry_interval_s=0: every call really tries the server, so each failure is swallowed, not skipped.
    logger = MlflowRunLogger(uri, "0" * 32, retry_interval_s=0)
    with caplog.at_level(logging.WARNING, logger="rsvlm.tracking"):
        for step in range(3):
            logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("rsvlm.tracking")]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "DROPPED" in text and "pw_leak" not in text


_HTTP_VARIABLES = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT")


def test_unreachable_server_at_start_is_reported_in_seconds_once(monkeypatch, caplog):
    """The probe, not MLflow's retries (7, with backoff: about 4 minutes), decides: a closed port is said at once."""
    import time

    from rsvlm.tracking import open_run

    for name in _HTTP_VARIABLES:  # MLflow's own defaults, as if nothing had bounded them
        monkeypatch.delenv(name, raising=False)
    tracking = TrackingConfig(uri=f"http://user:pw_leak@127.0.0.1:{free_port()}", experiment="probe")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        run_id = open_run(tracking, "train", None, params={"lr": 1}, untracked="Training goes on untracked")
    elapsed = time.monotonic() - started
    assert run_id is None
    assert elapsed < 30, f"{elapsed:.1f} s to notice a closed port"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "unreachable" in warnings[0] and "untracked" in warnings[0] and "pw_leak" not in warnings[0]


def test_the_probe_takes_any_http_answer_for_a_server_and_skips_database_uris(tmp_path, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import mlflow.utils.rest_utils

    from rsvlm.tracking.runs import probe_tracking_server

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe_tracking_server(f"http://127.0.0.1:{server.server_address[1]}")  # a 404 is an answer
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(MlflowException):
        probe_tracking_server(f"http://127.0.0.1:{free_port()}")

    requests: list = []
    monkeypatch.setattr(mlflow.utils.rest_utils, "http_request", lambda *a, **k: requests.append(a))
    for uri in (f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "mlruns"), "databricks"):
        probe_tracking_server(uri)
    assert requests == []


def test_http_retries_are_bounded_unless_the_user_set_them():
    from rsvlm.tracking.logger import HTTP_DEFAULTS, bound_http_retries

    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": ""}
    applied = bound_http_retries(environ)
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # the user's value wins
    assert applied == {k: v for k, v in HTTP_DEFAULTS.items() if k != "MLFLOW_HTTP_REQUEST_TIMEOUT"}
    assert environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def test_a_tracking_process_fails_fast_against_a_closed_port_after_start_up():
    """Every process that imports rsvlm.tracking (driver, Ray Train workers) gets the bounded retries, so a call
    during an outage (no probe there) costs seconds, not minutes; a user's own setting is kept."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import json, os, time
        from rsvlm.tracking import MlflowRunLogger
        from mlflow.tracking import MlflowClient
        started = time.monotonic()
        try:
            MlflowClient("http://127.0.0.1:{free_port()}").get_experiment_by_name("x")
        except Exception:
            pass
        print(json.dumps({{"elapsed": time.monotonic() - started,
                          "env": {{k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP_REQUEST")}}}}))
    """)
    clean = {k: v for k, v in os.environ.items() if k not in _HTTP_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert outcome["elapsed"] < 30, outcome
    assert outcome["env"]["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"

    done = subprocess.run([sys.executable, "-c", code], env={**clean, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
                          capture_output=True, text=True, timeout=300)
    assert json.loads(done.stdout.splitlines()[-1])["env"]["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"


# --------------------------------------------------------------------------------------------- run lifecycle


def test_tracked_run_ends_finished_failed_or_as_told(tracking):
    from rsvlm.tracking.lifecycle import tracked_run

    client = MlflowClient(tracking_uri=tracking.uri)
    with tracked_run(tracking, "ok", params={"lr": 1}, tags={"rsvlm.job": "test"}) as run:
        run.logger().log_metrics({"train/loss": 1.0}, 1)
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FINISHED" and finished.data.params == {"lr": "1"}
    assert finished.data.tags["rsvlm.job"] == "test"

    with pytest.raises(RuntimeError, match="boom"):
        with tracked_run(tracking, "broken", params={}) as failed:
            raise RuntimeError("boom")
    assert client.get_run(failed.run_id).info.status == "FAILED"

    with pytest.raises(KeyboardInterrupt):
        with tracked_run(tracking, "stopped", params={}) as stopped:
            stopped.end("KILLED")
            raise KeyboardInterrupt
    assert client.get_run(stopped.run_id).info.status == "KILLED"

    with tracked_run(tracking, "ok", run.run_id, params={"lr": 2}) as reopened:
        assert reopened.run_id == run.run_id
        assert client.get_run(run.run_id).info.status == "RUNNING"
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_tracked_run_without_a_server_goes_on_untracked_or_fails_as_asked(tmp_path, caplog):
    from rsvlm.tracking import is_transient_tracking_error
    from rsvlm.tracking.lifecycle import tracked_run

    down = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", experiment="e")
    with caplog.at_level(logging.WARNING, logger="rsvlm.tracking.runs"):
        with tracked_run(down, "t", params={}, untracked="Training goes on untracked") as run:
            assert run.run_id is None and isinstance(run.logger(), NullRunLogger)
    assert "Training goes on untracked" in caplog.text
    with pytest.raises(Exception) as caught:
        with tracked_run(down, "t", params={}):
            pass
    assert is_transient_tracking_error(caught.value)


def test_records_round_trip_and_a_damaged_one_is_named(tmp_path):
    from rsvlm.data.storage import Storage
    from rsvlm.tracking.lifecycle import RunRecord, SweepRecord, read_record, write_record

    storage, uri = Storage(), str(tmp_path / "run" / "rsvlm_run.json")
    assert read_record(storage, uri) == RunRecord()
    write_record(storage, uri, RunRecord("abc", 2, True, "/ckpt"))
    assert read_record(storage, uri) == RunRecord("abc", 2, True, "/ckpt")
    write_record(storage, uri, SweepRecord("p", 1))
    assert read_record(storage, uri, SweepRecord) == SweepRecord("p", 1)
    (tmp_path / "run" / "rsvlm_run.json").write_text("{not json")
    with pytest.raises(ValueError, match="rsvlm_run.json: not a RunRecord"):
        read_record(storage, uri)
