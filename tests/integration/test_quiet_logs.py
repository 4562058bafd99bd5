"""What a user reads of a successful run (`make demo`, `ray job logs`): rsvlm's progress and results, without
deprecation warnings, Ray Train's per-report metrics dump or error-level lines.

The pipeline job (what `make demo` runs: prepare, align and finetune on a Ray Train worker, evaluate on a Ray
Data actor, register) runs tiny in a process of its own with a Ray of its own (the session's ``pipeline_run``,
tests/integration/conftest.py). It also shows the DeprecationWarnings rsvlm's own modules and job scripts
issue, i.e. rsvlm's calls of a deprecated API. Ray shows its RayDeprecationWarnings, and transformers its
FutureWarnings, by default.
"""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEPRECATED = re.compile(r"deprecat|FutureWarning", re.IGNORECASE)
# Python's logging (Ray's, MLflow's: `ERROR`, `CRITICAL`), Ray Core's C++ log (`[2026-01-01 10:00:00,000 E 12 34]
# core_worker.cc…`), glog (`E0101 10:00:00.000000 …`), a traceback.
ERROR_LEVEL = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|\[\d{4}-\d\d-\d\d [\d:,.]+ [EF] \d+ \d+\]"
                         r"|(^|\s)[EF]\d{4} \d\d:\d\d:\d\d|Traceback \(most recent call last\)")
# The one error line left, which rsvlm cannot remove: Ray Data hands each actor of its pool its function as an
# object reference and lets it restart, and Ray Core logs that at error level for every actor created so
# (ray-project/ray#53727). Ray Data's only switch for it, map_batches(max_restarts=0), is deprecated in Ray 2.60
# (`ray_remote_args`) and would give up the restart of a lost evaluation actor.
RAY_DATA_ACTOR_ALARM = re.compile(r"core_worker\.cc:\d+: Actor with class name: "
                                  r"'MapWorker\(MapBatches\(QuestionAnswerer\)\)' .* has constructor arguments "
                                  r"in the object store and max_restarts > 0")


@pytest.fixture(scope="module")
def pipeline_log(pipeline_run) -> str:
    return pipeline_run.output


def _lines(log: str, pattern: re.Pattern) -> list[str]:
    return [line for line in log.splitlines() if pattern.search(line)]


def test_no_deprecation_or_future_warning(pipeline_log):
    assert _lines(pipeline_log, DEPRECATED) == []


def test_no_error_level_line(pipeline_log):
    assert [line for line in _lines(pipeline_log, ERROR_LEVEL) if not RAY_DATA_ACTOR_ALARM.search(line)] == []
    assert "PreemptionWatcher" not in pipeline_log  # Ray Train's watcher: off on the one-node Ray a job starts


def test_checkpoints_are_told_by_rsvlm_progress_not_ray_trains_metrics_dump(pipeline_log):
    assert "Reporting training result" not in pipeline_log
    assert "step 20/20 (100%)" in pipeline_log and "checkpoint at step 20" in pipeline_log
    assert "=== rsvlm demo summary ===" in pipeline_log


def test_a_sweep_leaves_tunes_periodic_table_off(tmp_path, monkeypatch):
    from rsvlm.config import compose
    from rsvlm.tune.sweep import _tuner

    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    job = compose([f"workdir={tmp_path}", "sweep=smoke"])
    tuner = _tuner(job, "smoke", str(tmp_path / "sweeps" / "smoke"), None, 1, 40)
    assert tuner._local_tuner.get_run_config().verbose == 0  # AirVerbosity.SILENT: no "Trial status" table
