"""Local services on 127.0.0.1 — an S3-compatible endpoint and an MLflow server — as child processes.

Tests, benches and the local stack start the same real servers through these context managers; each waits
until its server answers and stops it (terminate, then kill) when the block exits. Output goes to files, not
pipes: a chatty server would block on a full pipe nobody reads.
"""

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

HEALTH_TIMEOUT_S = 60.0


class ServiceError(RuntimeError):
    """A local service did not come up; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def run_s3_server(log_dir: Path, port: int | None = None) -> Iterator[str]:
    """Run moto's S3-compatible server until the block exits; yield its endpoint URL.

    moto accepts any credentials; callers still set ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (fake
    ones) so that no client ever falls back to a real AWS credential source.
    """
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _service("s3", cmd, Path(log_dir), port, lambda: _answers(f"{endpoint}/moto-api/")):
        yield endpoint


@contextlib.contextmanager
def run_mlflow_server(backend_db: Path, artifact_root: str | Path, port: int | None = None) -> Iterator[str]:
    """Run ``mlflow server`` (sqlite backend) until the block exits; yield its tracking URI.

    ``artifact_root`` is a local folder or an ``s3://`` URI (then the server needs the S3 variables).
    """
    port = port or free_port()
    if not str(artifact_root).startswith("s3://"):
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        artifact_root = Path(artifact_root).resolve().as_uri()
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{backend_db}",
           "--default-artifact-root", str(artifact_root), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with _service("mlflow", cmd, Path(backend_db).parent, port, lambda: _answers(f"{uri}/health"), env):
        yield uri


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def _service(name: str, cmd: list[str], log_dir: Path, port: int, healthy: Callable[[], bool],
             env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=str(log_dir))
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while not healthy():
            if proc.poll() is not None:
                raise ServiceError(f"{name} server exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{name} server not answering after {HEALTH_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no output>"
