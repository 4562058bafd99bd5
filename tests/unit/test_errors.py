"""Job errors: one line for the user, whatever raised them and wherever (a Ray worker included)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from rsvlm.errors import ConfigError, JobError, as_job_error

ROOT = Path(__file__).resolve().parents[2]


def test_a_job_error_is_one_line_and_survives_pickling():
    error = JobError("data/shard-00000.jsonl:7", "invalid JSON:\nExpecting value", "run jobs/prepare_data.py again")
    assert str(error) == "data/shard-00000.jsonl:7: invalid JSON: Expecting value (run jobs/prepare_data.py again)"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is JobError and str(copy) == str(error)
    config = pickle.loads(pickle.dumps(ConfigError("strategy.name", "invalid value 'x'", ["full", "lora"])))
    assert str(config) == "strategy.name: invalid value 'x' (choices: full, lora)" and config.exit_code == 2


def test_the_job_error_inside_rays_wrappers_is_the_one_reported():
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    inner = JobError("shard-00001.jsonl:3", "invalid JSON")
    task_error = RayTaskError("map_batches", "Traceback …", inner)
    wrapped = WorkerGroupError("training failed", {0: task_error})
    assert as_job_error(wrapped) is inner
    # What ray.get raises: an instance of both RayTaskError and JobError, its text the remote traceback.
    dual = task_error.as_instanceof_cause()
    assert isinstance(dual, JobError) and as_job_error(dual) is inner


def test_other_errors_name_their_file_or_their_innermost_cause_with_credentials_masked():
    try:
        open("/nonexistent/rsvlm-file")
    except OSError as exc:
        assert str(as_job_error(exc)) == "/nonexistent/rsvlm-file: No such file or directory"
    try:
        try:
            raise ValueError("cannot reach http://user:secret@host:5000\nsecond line")
        except ValueError as exc:
            raise RuntimeError("outer") from exc
    except RuntimeError as exc:
        line = str(as_job_error(exc))
    assert line == "ValueError: cannot reach http://***@host:5000 (unexpected; rerun with RSVLM_DEBUG=1 for the traceback)"


@pytest.mark.parametrize("debug", [False, True])
def test_a_failed_job_prints_one_error_line_and_the_traceback_only_when_asked(tmp_path, debug):
    env = {"PATH": "/usr/bin:/bin", "RSVLM_DEBUG": "1" if debug else "0"}
    done = subprocess.run([sys.executable, "jobs/evaluate.py", f"workdir={tmp_path}", "tracking=off",
                           f"model_uri={tmp_path}/no-such-checkpoint", "benchmark.workers=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # A fresh workdir has no benchmark files yet: the error names the file and the command that writes it.
    assert lines[-1].startswith("error: ") and "test_questions.jsonl" in lines[-1] and "prepare_data" in lines[-1]
    assert ("Traceback (most recent call last)" in done.stderr) is debug
    assert "Error executing job with overrides" not in done.stderr
