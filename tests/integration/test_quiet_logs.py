"""What a user reads of a successful run (`make demo`, `ray job logs`): rsvlm's progress and results, without
deprecation warnings, Ray Train's per-report metrics dump or error-level lines.

The pipeline job (what `make demo` runs: prepare, finetune on a Ray Train worker, evaluate on a Ray Data
actor, register) runs tiny in a process of its own with a Ray of its own. Python shows a DeprecationWarning
only where ``__main__`` issues it; a ``sitecustomize`` put on that process's ``PYTHONPATH`` (its Ray workers
inherit it) also shows those issued from rsvlm's modules and the job scripts, i.e. rsvlm's own calls of a
deprecated API. Ray shows its RayDeprecationWarnings, and transformers its FutureWarnings, by default.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=2", "scaling=cpu1",
        "scaling.cpus_per_worker=0.5", "train.max_steps=20", "align.max_steps=4", "train.log_every=10",
        "train.checkpoint_every=10", "train.val_batches=1", "benchmark.limit=8", "benchmark.workers=1",
        "tracking.system_metrics_interval_s=0"]

# Modules whose DeprecationWarnings are rsvlm's own calls: the package and the job scripts (imported by name).
_OWN_MODULES = r"(rsvlm(\..*)?|pipeline|finetune|evaluate|prepare_data|register|export|sweep|__main__)$"
SITECUSTOMIZE = f"""
import warnings
for _category in (DeprecationWarning, PendingDeprecationWarning):
    warnings.filterwarnings("default", category=_category, module={_OWN_MODULES!r})
"""

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


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           # The job starts its own Ray, and decides itself what it switches off in it (a Ray that this test
           # session started set some of that in this process's environment).
           if k not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RSVLM_DEBUG", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.fixture(scope="module")
def pipeline_log(tmp_path_factory) -> str:
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    workdir = tmp_path_factory.mktemp("quiet")
    done = subprocess.run([sys.executable, "jobs/pipeline.py", f"workdir={workdir}", *TINY], cwd=ROOT,
                          env=_env(site), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    (workdir / "pipeline.log").write_text(done.stdout)  # to read whole when a test fails
    assert done.returncode == 0, done.stdout[-6000:]
    assert (workdir / "demo_summary.json").exists()
    return done.stdout


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
