"""The local stack (``python -m rsvlm.dev.stack up|down``, what ``make stack`` runs): S3, MLflow and a Ray head
come up on the ports asked for, answer, and are gone after ``down``, with nothing left running."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from rsvlm.dev.services import answers, free_port, pid_alive
from rsvlm.dev.stack import FAKE_CREDENTIALS, MLFLOW_BUCKET, load_stack, processes_under

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def stack_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsvlm.dev.stack", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def parse_exports(text: str) -> dict[str, str]:
    exports = {}
    for line in text.splitlines():
        assert line.startswith("export "), f"stdout must hold only export lines for eval, got {line!r}"
        name, _, value = line[len("export "):].partition("=")
        exports[name] = value
    return exports


def test_stack_up_answers_and_down_leaves_nothing(tmp_path):
    state_dir = tmp_path / "stack"
    ports = {"s3": free_port(), "mlflow": free_port(), "ray": free_port(), "dashboard": free_port()}
    # A real-looking identity in the caller's environment must not reach the stack, nor its output. A fresh
    # HOME has no Ray token (~/.ray/auth_token), as on a new machine: the stack makes one.
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "AWS_SESSION_TOKEN": "caller-session-token",
           "AWS_PROFILE": "caller-profile"}
    up = stack_cli("up", "--state-dir", str(state_dir), "--s3-port", str(ports["s3"]),
                   "--mlflow-port", str(ports["mlflow"]), "--ray-port", str(ports["ray"]),
                   "--dashboard-port", str(ports["dashboard"]), "--num-cpus", "1", env=env)
    stack = load_stack(state_dir)
    try:
        assert up.returncode == 0, up.stderr
        exports = parse_exports(up.stdout)
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['s3']}"
        assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"
        assert exports["RAY_ADDRESS"] == f"http://127.0.0.1:{ports['dashboard']}"
        assert exports["AWS_ACCESS_KEY_ID"] == FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]
        assert "caller-" not in up.stdout + up.stderr

        s3 = boto3.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name="us-east-1")
        assert MLFLOW_BUCKET in {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
        assert answers(f"{exports['MLFLOW_TRACKING_URI']}/health")
        # The dashboard answers first; the cluster status follows once the autoscaler monitor reports.
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address",
                                     f"127.0.0.1:{ports['ray']}"], env={**env, **exports},
                                    capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stdout + status.stderr
            if "1.0 CPU" in status.stdout or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert "0.0/1.0 CPU" in status.stdout, status.stdout

        token = (home / ".ray" / "auth_token").read_text().strip()
        assert token and token not in up.stdout + up.stderr
        assert stack is not None and set(stack.services) == {"s3", "mlflow", "ray"}
        head_environ = Path(f"/proc/{stack.services['ray'].pid}/environ").read_bytes().split(b"\0")
        assert b"AWS_SESSION_TOKEN=caller-session-token" not in head_environ
        assert b"AWS_PROFILE=caller-profile" not in head_environ
        assert stack_cli("status", "--state-dir", str(state_dir), env=env).returncode == 0
        assert stack_cli("up", "--state-dir", str(state_dir), env=env).returncode == 1  # already running: refused
    finally:
        down = stack_cli("down", "--state-dir", str(state_dir), "--grace-period", "5", env=env, timeout=120)
        if stack is not None:
            shutil.rmtree(stack.ray_temp_dir, ignore_errors=True)

    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(service.pid) for service in stack.services.values())
    assert not processes_under(stack.ray_temp_dir)
    assert load_stack(state_dir) is None
    assert stack_cli("down", "--state-dir", str(state_dir)).returncode == 0  # idempotent


def test_stack_refuses_a_taken_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = stack_cli("up", "--state-dir", str(tmp_path / "stack"), "--s3-port", str(free_port()),
                           "--mlflow-port", str(port), "--ray-port", str(free_port()),
                           "--dashboard-port", str(free_port()))
    assert result.returncode == 1
    assert f"mlflow {port}" in result.stderr and result.stdout == ""
