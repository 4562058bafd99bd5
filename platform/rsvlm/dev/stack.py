"""The local stack: an S3 endpoint, an MLflow server and a Ray head on 127.0.0.1, started once, left running.

    python -m rsvlm.dev.stack up   [--state-dir .stack] [--s3-port 9000] [--mlflow-port 5000] [--ray-port 6379]
                                   [--dashboard-port 8265] [--num-cpus N]       # prints `export …` lines
    python -m rsvlm.dev.stack env  [--state-dir .stack]                             # the same lines again
    python -m rsvlm.dev.stack status [--state-dir .stack]
    python -m rsvlm.dev.stack down [--state-dir .stack]

``make stack`` / ``make stack-env`` / ``make stack-down`` run ``up`` / ``env`` / ``down``. The three servers
are the ones tests use (``rsvlm.dev.services``), started detached, each in its own process group:

- **S3**: moto's server, with the buckets ``rsvlm-mlflow`` (MLflow artifacts) and ``rsvlm-data`` (datasets).
  moto keeps objects in memory, so the stack is ephemeral: ``up`` also starts from an empty MLflow database.
- **MLflow**: sqlite backend in the state folder; artifacts on S3 under ``s3://rsvlm-mlflow/artifacts``, both
  as the default artifact root and behind the server's artifact proxy (``mlflow-artifacts:/…``, what
  ``tracking=server`` uses: clients need only ``MLFLOW_TRACKING_URI``; for the ``s3://`` root they use the
  exported S3 variables).
- **Ray head**: ``ray start --head --block`` from this interpreter's environment, with its own temporary
  folder (so ``ray.init()`` elsewhere on the machine never joins it by accident) and every port chosen here.
  The head's environment carries the stack's variables (endpoint, fake keys, tracking URI) and puts this
  interpreter's ``bin/`` first on ``PATH``, so a job sent with ``ray job submit -- python jobs/…`` runs with
  the project's Python and reaches S3 and MLflow without a ``runtime_env``. Ray's token authentication stays on
  (``ray start`` creates ``~/.ray/auth_token`` if missing); the exported ``RAY_AUTH_MODE=token`` makes the
  ``ray`` CLI send the token. The GCS port listens on all interfaces (Ray's choice); the dashboard and job API
  on 127.0.0.1 only.

The credentials are fixed fake values that only moto accepts; the stack never copies AWS credentials, profiles
or session tokens from the caller's environment into its processes, and prints nothing but its own values.

``state.json`` in the state folder records the pid (and start time) of each server; ``down`` stops each one by
its process group, then any process left running from the Ray head's temporary folder (Ray workers and job
drivers run in process groups of their own), and removes that folder (Ray's logs). Nothing else on the machine
is signalled: no ``ray stop``, which would stop every Ray instance of the user.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from rsvlm.dev.services import (
    MLFLOW_SERVER_ENV,
    DetachedService,
    ServiceError,
    answers,
    free_port,
    mlflow_server_command,
    pid_alive,
    process_start_ticks,
    s3_server_command,
    start_detached,
    stop_detached,
)

DEFAULT_STATE_DIR = ".stack"
STATE_FILE = "state.json"
MLFLOW_BUCKET = "rsvlm-mlflow"
DATA_BUCKET = "rsvlm-data"
MLFLOW_ARTIFACTS = f"s3://{MLFLOW_BUCKET}/artifacts"
# Local test values: moto accepts any key. Never real credentials.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rsvlm-local-key", "AWS_SECRET_ACCESS_KEY": "rsvlm-local-secret",
                    "AWS_DEFAULT_REGION": "us-east-1"}
# Variables through which a real AWS identity could reach the stack's processes; they never do.
_AWS_IDENTITY_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                           "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_WEB_IDENTITY_TOKEN_FILE",
                           "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                           "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
HEAD_TIMEOUT_S = 120.0
GRACE_S = 16.0  # `ray stop`'s default grace period
# The order services start in; they stop in reverse.
SERVICES = ("s3", "mlflow", "ray")


class StackError(RuntimeError):
    """The stack could not start (a port taken, a server that did not come up) or is not running."""


@dataclass
class StackPorts:
    s3: int = 9000
    mlflow: int = 5000
    ray: int = 6379
    dashboard: int = 8265


@dataclass
class Stack:
    """A running stack as recorded in ``<state_dir>/state.json``."""

    state_dir: str
    ports: StackPorts
    env: dict[str, str]
    ray_temp_dir: str
    services: dict[str, DetachedService] = field(default_factory=dict)
    ray_temp_owned: bool = False  # created by start_stack in /tmp, removed by stop_stack

    @property
    def s3_endpoint(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def dashboard_url(self) -> str:
        return self.env["RAY_ADDRESS"]

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports.ray}"

    def exports(self) -> str:
        """``export NAME=value`` lines for a shell's ``eval``."""
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.env.items())

    def running(self) -> dict[str, bool]:
        return {name: _is_ours(service) for name, service in self.services.items()}


def stack_env(ports: StackPorts) -> dict[str, str]:
    """What a client of the stack exports: the endpoint, the fake keys, the tracking URI, the job address."""
    s3 = f"http://127.0.0.1:{ports.s3}"
    return {"AWS_ENDPOINT_URL": s3, **FAKE_CREDENTIALS, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports.mlflow}",
            "MLFLOW_S3_ENDPOINT_URL": s3, "RAY_ADDRESS": f"http://127.0.0.1:{ports.dashboard}",
            # The head requires Ray's token (~/.ray/auth_token, created by `ray start` if missing); in this
            # mode the `ray` CLI and clients send it.
            "RAY_AUTH_MODE": "token"}


def start_stack(state_dir: str | Path = DEFAULT_STATE_DIR, ports: Optional[StackPorts] = None,
                num_cpus: Optional[int] = None, ray_temp_dir: Optional[str | Path] = None) -> Stack:
    """Start S3, MLflow and a Ray head on 127.0.0.1 and record them in ``state_dir``; return the stack.

    Refuses to start when ``state_dir`` records a stack that still runs, or when a port is taken. If a server
    does not come up, the ones already started are stopped and ``StackError`` carries the end of its log.
    """
    state_dir = Path(state_dir).resolve()
    existing = load_stack(state_dir)
    if existing is not None and any(existing.running().values()):
        raise StackError(f"a stack recorded in {state_dir} is running; stop it first (python -m rsvlm.dev.stack down)")
    ports = ports or StackPorts()
    taken = [f"{name} {port}" for name, port in asdict(ports).items() if not _port_free(port)]
    if taken:
        raise StackError(f"port(s) in use on 127.0.0.1: {', '.join(taken)} (choose others with --*-port)")
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    # Ray's socket paths live under its temporary folder and must stay under ~107 characters.
    temp = Path(ray_temp_dir) if ray_temp_dir else Path(tempfile.mkdtemp(prefix="rsvlm-ray-"))
    temp.mkdir(parents=True, exist_ok=True)
    env = stack_env(ports)
    stack = Stack(str(state_dir), ports, env, str(temp), ray_temp_owned=ray_temp_dir is None)
    child_env = _child_env(env)
    try:
        s3 = env["AWS_ENDPOINT_URL"]
        stack.services["s3"] = start_detached("s3", s3_server_command(ports.s3), logs, ports.s3,
                                              lambda: answers(f"{s3}/moto-api/"), child_env, state_dir)
        _save(stack)
        _create_buckets(s3, child_env)
        # moto keeps objects in memory: a new stack starts with empty buckets, so with an empty database too
        # (an old one would list runs whose artifacts are gone).
        (state_dir / "mlflow.db").unlink(missing_ok=True)
        mlflow_cmd = mlflow_server_command(state_dir / "mlflow.db", MLFLOW_ARTIFACTS, ports.mlflow,
                                           artifacts_destination=MLFLOW_ARTIFACTS)
        stack.services["mlflow"] = start_detached(
            "mlflow", mlflow_cmd, logs, ports.mlflow, lambda: answers(f"{stack.tracking_uri}/health"),
            {**child_env, **MLFLOW_SERVER_ENV}, state_dir)
        _save(stack)
        _ensure_ray_token(child_env)
        stack.services["ray"] = start_detached(
            "ray", ray_head_command(ports, num_cpus or os.cpu_count() or 1, temp), logs, ports.ray,
            lambda: _dashboard_answers(stack.dashboard_url), _head_env(child_env, ports.ray), state_dir, HEAD_TIMEOUT_S)
        _save(stack)
        _link(state_dir / "ray-logs", temp / "session_latest" / "logs")
    except BaseException as error:
        _stop(stack)
        _forget(stack)
        if isinstance(error, (ServiceError, OSError)):
            raise StackError(str(error)) from error
        raise
    return stack


def stop_stack(state_dir: str | Path = DEFAULT_STATE_DIR, grace_s: float = GRACE_S) -> list[str]:
    """Stop the stack recorded in ``state_dir``; return the names of the servers that were running.

    Each server gets SIGTERM and ``grace_s`` seconds to exit before SIGKILL (as ``ray stop``: after a job, the
    head's GCS can take over ten seconds).
    """
    stack = load_stack(Path(state_dir).resolve())
    if stack is None:
        return []
    stopped = _stop(stack, grace_s)
    _forget(stack)
    return stopped


def load_stack(state_dir: str | Path = DEFAULT_STATE_DIR) -> Optional[Stack]:
    """The stack recorded in ``state_dir``, or None."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return Stack(state["state_dir"], StackPorts(**state["ports"]), state["env"], state["ray_temp_dir"],
                 {name: DetachedService(**service) for name, service in state["services"].items()},
                 state.get("ray_temp_owned", False))


def ray_head_command(ports: StackPorts, num_cpus: int, temp_dir: str | Path) -> list[str]:
    """``ray start --head --block`` with the dashboard on 127.0.0.1 and every port fixed (none left to Ray's
    defaults, which would collide with another Ray instance on the machine)."""
    ray = str(Path(sys.executable).parent / "ray")
    return [ray, "start", "--head", "--block", "--disable-usage-stats", f"--port={ports.ray}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports.dashboard}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}"]


def _stop(stack: Stack, grace_s: float = GRACE_S) -> list[str]:
    stopped = []
    for name in reversed(SERVICES):
        service = stack.services.get(name)
        if service is not None and stop_detached(service.pid, service.start_ticks, grace_s):
            stopped.append(name)
    _stop_leftovers(stack.ray_temp_dir)
    return stopped


def _forget(stack: Stack) -> None:
    """Remove the state file, the log link and the Ray head's temporary folder if the stack made it."""
    state_dir = Path(stack.state_dir)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    if (state_dir / "ray-logs").is_symlink():
        (state_dir / "ray-logs").unlink()
    if stack.ray_temp_owned:
        shutil.rmtree(stack.ray_temp_dir, ignore_errors=True)


def _stop_leftovers(ray_temp_dir: str, timeout_s: float = 10.0) -> None:
    """Stop processes still running from the Ray head's temporary folder: workers and job drivers run in
    process groups of their own and normally exit with the raylet; this catches the ones that did not."""
    leftovers = processes_under(ray_temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftovers:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in leftovers):
            time.sleep(0.2)
        leftovers = [pid for pid in leftovers if pid_alive(pid)]
        if not leftovers:
            return


def processes_under(folder: str) -> list[int]:
    """Live processes of this user whose command line or working directory lies inside ``folder`` (Linux)."""
    folder = str(Path(folder).resolve())
    found = []
    proc = Path("/proc")
    if not proc.is_dir() or len(folder) < 8:
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                cwd = ""
        except OSError:
            continue
        if (folder + "/" in cmdline or cmdline.rstrip().endswith(folder) or cwd == folder
                or cwd.startswith(folder + "/")) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _ensure_ray_token(env: dict[str, str]) -> None:
    """Make sure Ray's token exists before a head starts in token mode: ``ray start`` only uses an existing
    one. ``ray get-auth-token --generate`` creates ``~/.ray/auth_token`` if missing; it also prints the token,
    which goes nowhere."""
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return
    if (Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token").is_file():
        return
    ray = str(Path(sys.executable).parent / "ray")
    result = subprocess.run([ray, "get-auth-token", "--generate"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=120)
    if result.returncode != 0:
        raise ServiceError(f"could not create Ray's authentication token:\n{result.stderr[-4000:]}")


def _dashboard_answers(url: str) -> bool:
    """Whether the Ray dashboard answers. With Ray's token authentication on (the default when
    ``~/.ray/auth_token`` exists) it answers 401 without the token; that is an answer too."""
    return answers(f"{url}/api/version", accepted=(200, 401, 403))


def _is_ours(service: DetachedService) -> bool:
    return pid_alive(service.pid) and (service.start_ticks is None
                                       or process_start_ticks(service.pid) == service.start_ticks)


def _child_env(stack_variables: dict[str, str]) -> dict[str, str]:
    """The environment of the stack's servers: this one without any AWS identity or Ray address, plus the
    stack's variables (except ``RAY_ADDRESS``, which is for clients of the job API)."""
    env = {name: value for name, value in os.environ.items()
           if name not in _AWS_IDENTITY_VARIABLES and name != "RAY_ADDRESS"}
    env.update({name: value for name, value in stack_variables.items() if name != "RAY_ADDRESS"})
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _head_env(child_env: dict[str, str], gcs_port: int) -> dict[str, str]:
    """The head's environment, which jobs inherit: this interpreter's ``bin/`` first on ``PATH``, so that
    ``python`` in a job's entrypoint is the project's, and ``RAY_ADDRESS`` naming the head's own GCS, so that
    its processes never ask another Ray instance on the machine about their cluster (see
    ``rsvlm.ray_session.start_local_ray``)."""
    bin_dir = str(Path(sys.executable).parent)
    return {**child_env, "PATH": os.pathsep.join([bin_dir, child_env.get("PATH", "")]),
            "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}


def _create_buckets(endpoint: str, env: dict[str, str]) -> None:
    """Create the stack's buckets, from a child process with the stack's environment: this process's own
    may name an AWS profile (boto3 would look it up and fail, or worse, use it)."""
    script = ("import boto3, sys\n"
              "client = boto3.client('s3', endpoint_url=sys.argv[1])\n"
              "existing = {b['Name'] for b in client.list_buckets().get('Buckets', [])}\n"
              "for bucket in sys.argv[2:]:\n"
              "    if bucket not in existing:\n"
              "        client.create_bucket(Bucket=bucket)\n")
    result = subprocess.run([sys.executable, "-c", script, endpoint, MLFLOW_BUCKET, DATA_BUCKET], env=env,
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ServiceError(f"creating the buckets failed:\n{result.stderr[-4000:]}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _link(link: Path, target: Path) -> None:
    """``link`` → ``target`` (replacing an old link), for finding the Ray head's logs from the state folder."""
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(target)


def _save(stack: Stack) -> None:
    path = Path(stack.state_dir) / STATE_FILE
    state = {"state_dir": stack.state_dir, "ports": asdict(stack.ports), "env": stack.env,
             "ray_temp_dir": stack.ray_temp_dir, "ray_temp_owned": stack.ray_temp_owned,
             "services": {name: asdict(service) for name, service in stack.services.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsvlm.dev.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "env", "status"])
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    defaults = StackPorts()
    parser.add_argument("--s3-port", type=int, default=defaults.s3)
    parser.add_argument("--mlflow-port", type=int, default=defaults.mlflow)
    parser.add_argument("--ray-port", type=int, default=defaults.ray)
    parser.add_argument("--dashboard-port", type=int, default=defaults.dashboard)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--grace-period", type=float, default=GRACE_S,
                        help="down: seconds between SIGTERM and SIGKILL for each server")
    args = parser.parse_args(argv)

    def say(text: str) -> None:  # messages on stderr; stdout is only `export` lines, for eval
        print(text, file=sys.stderr, flush=True)

    if args.command == "up":
        ports = StackPorts(args.s3_port, args.mlflow_port, args.ray_port, args.dashboard_port)
        started = time.monotonic()
        try:
            stack = start_stack(args.state_dir, ports, args.num_cpus)
        except StackError as error:
            say(f"stack: {error}")
            return 1
        say(f"stack up in {time.monotonic() - started:.0f} s: S3 {stack.s3_endpoint}, MLflow {stack.tracking_uri}, "
            f"Ray {stack.gcs_address} (dashboard {stack.dashboard_url}); state and logs in {stack.state_dir}")
        say(f'stack: load the variables with: eval "$(make -s stack-env)"  '
            f'(or: eval "$(python -m rsvlm.dev.stack env --state-dir {args.state_dir})")')
        print(stack.exports(), end="")
        return 0
    stack = load_stack(args.state_dir)
    if args.command == "down":
        if stack is None:
            say(f"stack: nothing recorded in {args.state_dir}")
            return 0
        stopped = stop_stack(args.state_dir, args.grace_period)
        say(f"stack down: stopped {', '.join(stopped) or 'nothing (no server was still running)'}")
        return 0
    if stack is None:
        say(f"stack: nothing recorded in {args.state_dir}; start it with `make stack`")
        return 1
    if args.command == "env":
        print(stack.exports(), end="")
        return 0
    for name, up in stack.running().items():  # status
        service = stack.services[name]
        state = "running" if up else "stopped"
        say(f"{name:7s} pid {service.pid:<8d} port {service.port:<6d} {state}  log {service.log}")
    return 0 if all(stack.running().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
