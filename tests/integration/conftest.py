"""Shared fixtures for integration tests: real services started as subprocesses on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from rsvlm.dev.services import run_mlflow_server, run_s3_server
from support import JUDGE_KEY, TEST_BUCKET, TRACKING_PASSWORD


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server (sqlite + file:// artifacts in tmp) for one test module; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with run_mlflow_server(root / "mlflow.db", root / "artifacts") as uri:
        yield uri


@pytest.fixture()
def mlflow_server_launcher() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``launch(backend_db, artifact_root, port=None)``: a context manager running one more server.

    For tests that need control over a server's lifetime (start it late, stop it early).
    """
    return run_mlflow_server


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the session, with bucket ``rsvlm-test``; yields the endpoint URL.

    The fake credentials it accepts are set for every process in tests/conftest.py.
    """
    import boto3

    with run_s3_server(tmp_path_factory.mktemp("s3-server")) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=TEST_BUCKET)
        yield endpoint


@pytest.fixture
def s3_prefix(s3_endpoint) -> str:
    """A fresh ``s3://rsvlm-test/<random>`` prefix on the session's S3 server."""
    return f"s3://{TEST_BUCKET}/{uuid.uuid4().hex}"


# ------------------------------------------------------------------------------------ one whole pipeline run

ROOT = Path(__file__).resolve().parents[2]
# The demo's pipeline, tiny: both stages on a real Ray Train worker, evaluation on a Ray Data actor.
TINY_PIPELINE = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=2", "scaling=cpu1",
                 "scaling.cpus_per_worker=0.5", "strategy.rank=8", "strategy.alpha=16", "train.max_steps=20",
                 "align.max_steps=4", "train.log_every=10", "train.checkpoint_every=10", "train.val_batches=1",
                 "benchmark.limit=8", "benchmark.workers=1", "tracking.system_metrics_interval_s=0"]
# Modules whose DeprecationWarnings are rsvlm's own calls: the package and the job scripts (imported by name).
_OWN_MODULES = r"(rsvlm(\..*)?|pipeline|finetune|evaluate|prepare_data|register|export|sweep|__main__)$"
# Python shows a DeprecationWarning only where ``__main__`` issues it; this ``sitecustomize`` on the job's
# PYTHONPATH (its Ray workers inherit it) also shows those rsvlm's modules and the job scripts issue.
_SITECUSTOMIZE = f"""
import warnings
for _category in (DeprecationWarning, PendingDeprecationWarning):
    warnings.filterwarnings("default", category=_category, module={_OWN_MODULES!r})
"""


@dataclass(frozen=True)
class PipelineRun:
    workdir: Path
    output: str  # stdout and stderr, interleaved as a user reads them
    server_uri: str  # the MLflow server it tracked into (http://host:port, no credentials)
    server_root: Path  # the server's sqlite database and artifact root


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Iterator[PipelineRun]:
    """``jobs/pipeline.py`` (what `make demo` runs) once for the session, tiny, in a process with a Ray of its
    own, tracking into a real MLflow server through a URI that holds a password. test_quiet_logs.py reads
    what it printed, test_secrets.py greps everything it wrote: one run, because each takes minutes."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    server_root = tmp_path_factory.mktemp("pipeline-mlflow")
    workdir = tmp_path_factory.mktemp("pipeline") / "work"
    env = {k: v for k, v in os.environ.items()
           # The job starts its own Ray, and decides itself what it switches off in it (a Ray that this test
           # session started set some of that in this process's environment).
           if k not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RSVLM_DEBUG", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["RSVLM_JUDGE_API_KEY"] = JUDGE_KEY
    with run_mlflow_server(server_root / "mlflow.db", server_root / "artifacts") as uri:
        host = uri.removeprefix("http://")
        done = subprocess.run([sys.executable, "jobs/pipeline.py", f"workdir={workdir}",
                               f"tracking.uri=http://rsvlm:{TRACKING_PASSWORD}@{host}", *TINY_PIPELINE],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=900)
        (workdir.parent / "pipeline.log").write_text(done.stdout)  # to read whole when a test fails
        assert done.returncode == 0, done.stdout[-6000:]
        yield PipelineRun(workdir, done.stdout, uri, server_root)
