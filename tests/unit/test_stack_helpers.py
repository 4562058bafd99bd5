"""rsvlm.dev.stack and the detached-service helpers of rsvlm.dev.services, without starting the real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rsvlm.dev.services import (
    ServiceError,
    free_port,
    group_members,
    pid_alive,
    process_start_ticks,
    start_detached,
    stop_detached,
)
from rsvlm.dev.stack import FAKE_CREDENTIALS, StackPorts, _child_env, _head_env, ray_head_command, stack_env

linux_only = pytest.mark.skipif(not os.path.isdir("/proc"), reason="process groups are read from /proc")


def test_exports_evaluate_in_a_shell_to_the_stack_variables():
    from rsvlm.dev.stack import Stack

    stack = Stack("/tmp/x", StackPorts(1, 2, 3, 4), stack_env(StackPorts(1, 2, 3, 4)), "/tmp/ray")
    shell = subprocess.run(["bash", "-c", stack.exports() + "env"], capture_output=True, text=True, check=True)
    env = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:2"
    assert env["RAY_ADDRESS"] == "http://127.0.0.1:4"
    assert env["AWS_ACCESS_KEY_ID"] == FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]


def test_servers_never_inherit_an_aws_identity(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "prod")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "real-token")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREAL")
    monkeypatch.setenv("RAY_ADDRESS", "somewhere:6379")
    env = _head_env(_child_env(stack_env(StackPorts())), 6390)
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    # The head's own GCS, not the caller's: its processes must never look another Ray instance up.
    assert env["RAY_ADDRESS"] == "127.0.0.1:6390"
    assert env["AWS_ACCESS_KEY_ID"] == FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_ray_head_command_blocks_in_its_own_folder_with_every_port_fixed():
    cmd = ray_head_command(StackPorts(9000, 5000, 6379, 8265), 2, "/tmp/rsvlm-ray-x")
    assert cmd[0] == os.path.join(os.path.dirname(sys.executable), "ray")
    assert {"--head", "--block", "--port=6379", "--dashboard-port=8265", "--dashboard-host=127.0.0.1",
            "--num-cpus=2", "--temp-dir=/tmp/rsvlm-ray-x"} <= set(cmd)
    for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port"):
        assert any(arg.startswith(flag + "=") for arg in cmd), flag


@linux_only
def test_stop_detached_stops_the_whole_process_group(tmp_path):
    # A server that starts a child which ignores SIGTERM: SIGKILL to the group must follow the grace period.
    (tmp_path / "child.py").write_text("import signal, sys, time\n"
                                       "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                       "open(sys.argv[1], 'w').close()\n"
                                       "time.sleep(60)\n")
    (tmp_path / "server.py").write_text("import subprocess, sys, time\n"
                                        "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])\n"
                                        "time.sleep(60)\n")
    ready = tmp_path / "ready"
    cmd = [sys.executable, str(tmp_path / "server.py"), str(tmp_path / "child.py"), str(ready)]
    service = start_detached("sleeper", cmd, tmp_path, free_port(), ready.exists)
    assert service.start_ticks == process_start_ticks(service.pid)
    members = group_members(service.pid)
    assert service.pid in members and len(members) == 2
    started = time.monotonic()
    assert stop_detached(service.pid, service.start_ticks, timeout_s=1) is True
    assert time.monotonic() - started < 8
    assert not group_members(service.pid) and not any(pid_alive(pid) for pid in members)


def test_start_detached_reports_a_server_that_exits(tmp_path):
    with pytest.raises(ServiceError, match="exited with 3"):
        start_detached("broken", [sys.executable, "-c", "print('no luck'); raise SystemExit(3)"], tmp_path,
                       free_port(), lambda: False)


def test_stop_detached_leaves_a_reused_pid_alone():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        ticks = process_start_ticks(sleeper.pid)
        wrong = (ticks or 0) + 1
        assert stop_detached(sleeper.pid, wrong, timeout_s=1) is False
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not pid_alive(sleeper.pid)
