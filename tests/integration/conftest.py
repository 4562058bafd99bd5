"""Shared fixtures for integration tests: real services started as subprocesses on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

_HEALTH_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nobody listens on right now (bound to 127.0.0.1:0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no output>"


@contextlib.contextmanager
def run_mlflow_server(backend_db: Path, artifact_root: Path, port: int | None = None) -> Iterator[str]:
    """Run ``mlflow server`` (sqlite backend, file artifact root) until the block exits; yield its URI."""
    port = port or free_port()
    artifact_root.mkdir(parents=True, exist_ok=True)
    log_dir = backend_db.parent
    # Files, not pipes: a chatty server would block on a full pipe nobody reads.
    stdout_path = log_dir / f"mlflow-server-{port}.out"
    stderr_path = log_dir / f"mlflow-server-{port}.err"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{backend_db}",
        "--default-artifact-root", artifact_root.resolve().as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=str(log_dir))
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _HEALTH_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}; stderr:\n{_tail(stderr_path)}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {_HEALTH_TIMEOUT_S:.0f} s; stderr:\n{_tail(stderr_path)}")
            time.sleep(0.25)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
