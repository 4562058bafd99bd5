"""Local services on 127.0.0.1 — an S3-compatible endpoint and an MLflow server — as child processes.

Tests, benches and the local stack start the same real servers through these context managers; each waits
until its server answers and stops it (terminate, then kill) when the block exits. Output goes to files, not
pipes: a chatty server would block on a full pipe nobody reads.

``start_detached`` starts a server that outlives the block and the Python process (the local stack,
``rsvlm.dev.stack``): it runs in a session of its own, so ``stop_detached(pid)`` can stop it together with the
processes it started, and only those, by signalling its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

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
    with _service("s3", s3_server_command(port), Path(log_dir), port, lambda: answers(f"{endpoint}/moto-api/")):
        yield endpoint


def s3_server_command(port: int) -> list[str]:
    """moto's S3-compatible server on 127.0.0.1:``port``, from this interpreter."""
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@contextlib.contextmanager
def run_mlflow_server(backend_db: Path, artifact_root: str | Path, port: int | None = None) -> Iterator[str]:
    """Run ``mlflow server`` (sqlite backend) until the block exits; yield its tracking URI.

    ``artifact_root`` is a local folder or an ``s3://`` URI (then the server needs the S3 variables).
    """
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = mlflow_server_command(backend_db, artifact_root, port)
    with _service("mlflow", cmd, Path(backend_db).parent, port, lambda: answers(f"{uri}/health"), MLFLOW_SERVER_ENV):
        yield uri


@contextlib.contextmanager
def run_model_server(model_uri: str, tracking_uri: str, log_dir: Path, port: int | None = None) -> Iterator[str]:
    """Serve ``model_uri`` (e.g. ``models:/rsvlm-tiny-lora@champion``) with ``mlflow models serve`` from this
    environment (``--env-manager local``) until the block exits; yield its URL (``POST <url>/invocations``)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port)]
    # MLflow starts the scoring server as a bare `uvicorn` command: it must find this environment's on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri, "PATH": path}
    with _service("model-server", cmd, Path(log_dir), port, lambda: answers(f"{url}/ping"), env):
        yield url


# The server's job runner (MLflow 3) would start extra worker processes nobody here uses.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server_command(backend_db: Path, artifact_root: str | Path, port: int,
                          artifacts_destination: Optional[str] = None) -> list[str]:
    """``mlflow server`` with a sqlite backend on 127.0.0.1:``port``, from this interpreter.

    ``artifact_root`` (``--default-artifact-root``) is a local folder (created) or a URI such as ``s3://…``.
    ``artifacts_destination`` turns on the artifact proxy (``mlflow-artifacts:/`` URIs) and says where the
    server stores what clients send through it.
    """
    if "://" not in str(artifact_root) and not str(artifact_root).startswith("mlflow-artifacts:"):
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        artifact_root = Path(artifact_root).resolve().as_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{Path(backend_db).resolve()}",
           "--default-artifact-root", str(artifact_root), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    if artifacts_destination:
        cmd += ["--serve-artifacts", "--artifacts-destination", artifacts_destination]
    return cmd


def answers(url: str, accepted: tuple[int, ...] = (200,)) -> bool:
    """Whether ``url`` answers right now with one of the ``accepted`` HTTP statuses."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status in accepted
    except urllib.error.HTTPError as error:
        return error.code in accepted
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
        _wait_healthy(name, proc, log_path, healthy)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(name: str, proc: subprocess.Popen, log_path: Path, healthy: Callable[[], bool],
                  timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not healthy():
        if proc.poll() is not None:
            raise ServiceError(f"{name} server exited with {proc.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{name} server not answering after {timeout_s:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.2)


@dataclass
class DetachedService:
    """A server started by ``start_detached``: enough to find it again from another process and stop it."""

    name: str
    pid: int
    port: int
    log: str
    start_ticks: Optional[int]  # the process's start time (Linux /proc), so a reused pid is never signalled


# Popen objects of the detached services this process started, so that stopping one also reaps it.
_CHILDREN: dict[int, subprocess.Popen] = {}


def start_detached(name: str, cmd: list[str], log_dir: Path, port: int, healthy: Callable[[], bool],
                   env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
                   timeout_s: float = HEALTH_TIMEOUT_S) -> DetachedService:
    """Start ``cmd`` in a new session (its own process group), wait until ``healthy()``, and leave it running.

    ``env`` is the complete environment of the process (not added to this one's), so the caller decides what
    it inherits. The server's output goes to ``log_dir/<name>-<port>.log``. If it does not come up, it is
    stopped and ``ServiceError`` carries the end of its log.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ if env is None else env), cwd=str(cwd or log_dir),
                                start_new_session=True)
    _CHILDREN[proc.pid] = proc
    service = DetachedService(name, proc.pid, port, str(log_path), process_start_ticks(proc.pid))
    try:
        _wait_healthy(name, proc, log_path, healthy, timeout_s)
    except BaseException:
        stop_detached(service.pid, service.start_ticks)
        raise
    return service


def stop_detached(pid: int, start_ticks: Optional[int] = None, timeout_s: float = 20.0) -> bool:
    """Stop a service started by ``start_detached`` and everything left in its process group.

    SIGTERM to the group, then SIGKILL to whatever is left after ``timeout_s``. Nothing is signalled when the
    pid is gone or now names another process (its start time differs from ``start_ticks``). Returns whether
    the service was running.
    """
    if not pid_alive(pid) or (start_ticks is not None and process_start_ticks(pid) != start_ticks):
        _reap(pid)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (pid_alive(pid) or group_members(pid)):
        _reap(pid)
        time.sleep(0.2)
    if pid_alive(pid) or group_members(pid):
        _signal_group(pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while time.monotonic() < end and (pid_alive(pid) or group_members(pid)):
            _reap(pid)
            time.sleep(0.1)
    _reap(pid)
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    proc = _CHILDREN.pop(pid, None)
    if proc is None:
        return
    if proc.poll() is None:
        _CHILDREN[pid] = proc


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    state = _proc_stat(pid)
    if state is not None:
        return state[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_ticks(pid: int) -> Optional[int]:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None where /proc is not available."""
    state = _proc_stat(pid)
    return int(state[19]) if state is not None else None


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) in process group ``pgid`` (Linux; empty elsewhere)."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            state = _proc_stat(int(entry.name))
            if state is not None and int(state[2]) == pgid and state[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _proc_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, …]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no output>"
