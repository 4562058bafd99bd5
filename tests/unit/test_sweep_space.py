"""Search spaces, trial configs, concurrency and sweep results: pure functions, no Ray cluster."""

from __future__ import annotations

import csv
import json

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from rsvlm.config import ConfigError, to_dict
from rsvlm.config.sweep import OptimizeMode
from rsvlm.tracking import flatten_config
from rsvlm.tune.results import (
    COMPLETED,
    FAILED,
    STOPPED_EARLY,
    TrialOutcome,
    best_trial,
    plot_axes,
    table_rows,
    write_plot,
    write_table,
)
from rsvlm.tune.space import (
    flat_values,
    max_concurrent_trials,
    nested_values,
    search_space,
    trial_count,
    trial_job,
    trial_resources,
    validate_space,
)

MOE = ("strategy=moe_lora", "scaling=cpu1")


def test_search_space_builds_each_kind_of_tune_domain(compose_job):
    job = compose_job(*MOE, "sweep.search=random",
                      "+sweep.space.strategy.rank={grid:[8,16]}",
                      "+sweep.space.strategy.top_k={choice:[null,1]}",
                      "+sweep.space.optim.lr={loguniform:[1e-4,1e-2]}",
                      "+sweep.space.strategy.dropout={uniform:[0.0,0.2]}",
                      "+sweep.space.train.micro_batch_size={randint:[2,9]}")
    validate_space(job)
    space = search_space(job.sweep)
    assert space["strategy"]["rank"] == {"grid_search": [8, 16]}
    top_k = space["strategy"]["top_k"]
    assert isinstance(top_k, Categorical) and top_k.categories == [None, 1]
    lr = space["optim"]["lr"]
    assert isinstance(lr, Float) and isinstance(lr.get_sampler(), LogUniform)
    assert (lr.lower, lr.upper) == (1e-4, 1e-2)
    dropout = space["strategy"]["dropout"]
    assert isinstance(dropout, Float) and (dropout.lower, dropout.upper) == (0.0, 0.2)
    batch = space["train"]["micro_batch_size"]
    assert isinstance(batch, Integer) and (batch.lower, batch.upper) == (2, 9)
    # Grids are crossed and repeated num_samples times; sampled dimensions do not multiply trials.
    assert trial_count(job.sweep) == 2


def test_grid_count_crosses_dimensions_and_repeats(compose_job):
    job = compose_job("sweep=smoke", "sweep.num_samples=3")
    assert trial_count(job.sweep) == 2 * 2 * 3


@pytest.mark.parametrize("overrides, key, problem", [
    ((), "sweep.space", "is empty"),
    (("+sweep.space.tracking.uri={grid:[a,b]}",), "sweep.space.tracking", "not a group a sweep can change"),
    (("+sweep.space.strategy.rnak={grid:[8,16]}",), "sweep.space.strategy.rnak", "no such setting"),
    (("+sweep.space.strategy.rank={grid:[8],choice:[16]}",), "sweep.space.strategy.rank", "exactly one of"),
    (("+sweep.space.strategy.rank={grid:[]}",), "sweep.space.strategy.rank", "at least one value"),
    (("+sweep.space.optim.lr={loguniform:[0.01,0.001]}",), "sweep.space.optim.lr", "low < high"),
    (("+sweep.space.optim.lr={loguniform:[0,0.001]}",), "sweep.space.optim.lr", "low > 0"),
    (("sweep.search=grid", "+sweep.space.optim.lr={loguniform:[1e-4,1e-3]}"), "sweep.space.optim.lr",
     "grid dimensions only"),
    (("sweep.search=optuna", "+sweep.space.strategy.rank={grid:[8,16]}"), "sweep.space.strategy.rank",
     "write choice instead of grid"),
    # rank 8 shared by 3 experts is not a whole number per expert: caught before any trial starts.
    (("+sweep.space.strategy.num_experts={grid:[2,3]}",), "sweep.space", "strategy.num_experts=3"),
    (("+sweep.space.optim.lr={choice:[0.001,-1]}",), "sweep.space", "optim.lr"),
])
def test_validate_space_names_the_bad_dimension(compose_job, overrides, key, problem):
    job = compose_job(*MOE, "strategy.rank=8", *overrides)
    with pytest.raises(ConfigError) as error:
        validate_space(job)
    assert error.value.key == key
    assert problem in str(error.value)


def test_a_misspelled_dimension_kind_fails_when_the_config_is_composed(compose_job):
    with pytest.raises(ConfigError) as error:
        compose_job("+sweep.space.strategy.rank={gird:[8,16]}")
    assert "sweep.space.strategy.rank" in str(error.value) and "grid" in str(error.value)


def test_trial_job_applies_values_and_logs_them_under_finetune_keys(compose_job):
    job = compose_job("sweep=smoke")
    base = to_dict(job)
    trial = trial_job(base, {"strategy": {"rank": 16, "num_experts": 4}, "optim": {"lr": 0.001}}, "smoke-abc_00001")
    assert (trial.strategy.rank, trial.strategy.num_experts, trial.optim.lr) == (16, 4, 0.001)
    assert trial.train.run_name == "smoke-abc_00001"
    params = flatten_config(to_dict(trial))
    assert params["strategy.rank"] == "16" and params["strategy.num_experts"] == "4" and params["optim.lr"] == "0.001"
    # The base is not changed by building a trial from it.
    assert base["strategy"]["rank"] == job.strategy.rank and base["train"]["run_name"] is None


def test_trial_job_rejects_an_invalid_combination(compose_job):
    base = to_dict(compose_job(*MOE))
    with pytest.raises(ConfigError, match="strategy.rank"):
        trial_job(base, {"strategy": {"rank": 10, "num_experts": 4}}, "bad")


def test_flat_and_nested_values_are_inverses():
    nested = {"strategy": {"rank": 8, "top_k": None}, "optim": {"lr": 0.01}}
    flat = flat_values(nested)
    assert flat == {"strategy.rank": 8, "strategy.top_k": None, "optim.lr": 0.01}
    assert nested_values(flat) == nested


@pytest.mark.parametrize("overrides, cluster, trials, expected", [
    # 2 cores, 1 kept for Ray Data, 0.25 (driver) + 0.25 (worker) per trial: 2 at once.
    (("sweep=smoke",), {"CPU": 2.0}, 4, 2),
    # Never more than there are trials.
    (("sweep=smoke",), {"CPU": 16.0}, 4, 4),
    # Never fewer than one, even when a trial does not fit the counted CPUs.
    (("sweep=smoke", "sweep.reserved_cpus=2"), {"CPU": 2.0}, 4, 1),
    # GPUs limit: 8 GPUs, 4 per trial.
    (("scaling=gpu4", "sweep.trial_cpus=1", "sweep.reserved_cpus=0"), {"CPU": 128.0, "GPU": 8.0}, 10, 2),
    # An explicit limit wins (capped by the trial count).
    (("sweep=smoke", "sweep.max_concurrent_trials=3"), {"CPU": 1.0}, 4, 3),
    (("sweep=smoke", "sweep.max_concurrent_trials=8"), {"CPU": 64.0}, 4, 4),
])
def test_max_concurrent_trials_from_cluster_resources(compose_job, overrides, cluster, trials, expected):
    assert max_concurrent_trials(cluster, compose_job(*overrides), trials) == expected


def test_trial_resources_count_driver_and_workers(compose_job):
    assert trial_resources(compose_job("sweep=smoke")) == {"CPU": 0.5}
    assert trial_resources(compose_job("scaling=gpu4", "sweep.trial_cpus=1")) == {"CPU": 33.0, "GPU": 4.0}


def test_sweep_presets_compose_and_validate(compose_job):
    smoke = compose_job("sweep=smoke")
    validate_space(smoke)
    assert (smoke.model.name, smoke.strategy.name.value, smoke.sweep.scheduler.value) == ("tiny", "moe_lora", "asha")
    paper = compose_job("sweep=paper")
    validate_space(paper)
    assert paper.model.name_or_path == "llava-hf/llava-1.5-7b-hf" and paper.scaling.use_gpu
    assert paper.sweep.search.value == "optuna" and paper.strategy.num_experts == 4
    assert set(paper.sweep.space["strategy"]) == {"rank", "num_experts", "top_k"}


def _outcome(trial_id, status, metric, rank=8, experts=2, step=40):
    return TrialOutcome(trial_id, f"s-{trial_id}", status, {"strategy.rank": rank, "strategy.num_experts": experts},
                        metric, step, f"run-{trial_id}", f"/ckpt/{trial_id}")


def test_best_trial_only_counts_trials_that_trained_to_the_end():
    outcomes = [_outcome("a", COMPLETED, 2.5), _outcome("b", STOPPED_EARLY, 1.0, step=20),
                _outcome("c", FAILED, 0.5), _outcome("d", COMPLETED, 2.1), _outcome("e", COMPLETED, float("nan"))]
    assert best_trial(outcomes, OptimizeMode.min).trial_id == "d"
    assert best_trial(outcomes, OptimizeMode.max).trial_id == "a"
    assert best_trial([_outcome("b", STOPPED_EARLY, 1.0)], OptimizeMode.min) is None


def test_results_table_and_plot_files(tmp_path):
    outcomes = [_outcome("t2", COMPLETED, 2.0, rank=16, experts=4), _outcome("t1", STOPPED_EARLY, 3.0, step=20),
                _outcome("t3", COMPLETED, 2.5, rank=16, experts=2), _outcome("t4", FAILED, None, rank=8, experts=4)]
    rows = table_rows(outcomes, "val/loss")
    assert [row["trial_id"] for row in rows] == ["t1", "t2", "t3", "t4"]
    assert rows[1] == {"trial_id": "t2", "strategy.num_experts": 4, "strategy.rank": 16, "val/loss": 2.0, "step": 40,
                       "status": COMPLETED, "mlflow_run_id": "run-t2", "checkpoint_uri": "/ckpt/t2", "error": None}
    csv_path, json_path = write_table(rows, tmp_path)
    with csv_path.open() as stream:
        read = list(csv.DictReader(stream))
    assert [r["status"] for r in read] == [STOPPED_EARLY, COMPLETED, COMPLETED, FAILED]
    assert read[0]["val/loss"] == "3.0" and read[3]["val/loss"] == ""
    assert json.loads(json_path.read_text())[2]["strategy.rank"] == 16
    plot = write_plot(outcomes, "val/loss", tmp_path / "plot.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    assert write_plot([_outcome("x", FAILED, None)], "val/loss", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_plot_axes_prefer_rank_and_experts():
    assert plot_axes(["optim.lr", "strategy.num_experts", "strategy.rank"]) == ("strategy.rank", "strategy.num_experts")
    assert plot_axes(["optim.lr", "strategy.top_k"]) == ("optim.lr", "strategy.top_k")
    assert plot_axes(["optim.lr"]) == ("optim.lr", None)
    assert plot_axes([]) == (None, None)
