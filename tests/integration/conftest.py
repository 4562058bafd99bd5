"""Shared fixtures for integration tests: real services started as subprocesses on 127.0.0.1."""

from __future__ import annotations

import contextlib
import uuid
from typing import Callable, Iterator

import pytest

from rsvlm.dev.services import run_mlflow_server, run_s3_server
from support import TEST_BUCKET


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
