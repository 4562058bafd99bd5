"""Ray Tune sweep settings (``sweep`` group): the search, its space, scheduler and trial resources."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Optional

from rsvlm.config.checks import require


class SearchAlgorithm(Enum):
    """How a sweep picks trials (``rsvlm.tune.space``)."""

    grid = "grid"  # every combination of the grid dimensions (each one ``num_samples`` times)
    random = "random"  # grid dimensions crossed, the others drawn at random, ``num_samples`` times
    optuna = "optuna"  # Optuna's TPE: each trial's values chosen from the results so far


class TrialScheduler(Enum):
    """``fifo`` runs every trial to the end; ``asha`` stops the worse ones at each rung (ASHA)."""

    fifo = "fifo"
    asha = "asha"


class OptimizeMode(Enum):
    min = "min"
    max = "max"


@dataclass
class SearchDimension:
    """One swept setting: exactly one of the fields, e.g. ``{grid: [32, 128]}`` or ``{loguniform: [1e-5, 1e-3]}``."""

    grid: Optional[list[Any]] = None  # every value, crossed with the other grid dimensions
    choice: Optional[list[Any]] = None  # one value drawn per trial
    uniform: Optional[list[float]] = None  # [low, high]
    loguniform: Optional[list[float]] = None  # [low, high], both > 0: for learning rates
    randint: Optional[list[int]] = None  # [low, high): an integer


@dataclass
class SweepConfig:
    """A Ray Tune sweep (``jobs/sweep.py``): every trial is one fine-tuning run with some settings changed.

    ``space`` is keyed like the config itself, ``space.strategy.rank`` sweeping ``strategy.rank``; each trial
    is then logged with the same params as a plain finetune run.
    """

    # Names the sweep: its folder under storage_uri and its parent MLflow run. The same name again resumes an
    # interrupted sweep. null = sweep-<time>-<random>.
    name: Optional[str] = None
    search: SearchAlgorithm = SearchAlgorithm.random
    # Repeats of the grid (grid, random), or trials (optuna).
    num_samples: int = 1
    # {group: {setting: SearchDimension}}; typed in __post_init__ (OmegaConf cannot type a dict of dicts).
    space: dict[str, Any] = field(default_factory=dict)
    # What picks the best trial, and what ASHA and Optuna act on: a metric reported at every checkpoint.
    metric: str = "val/loss"
    mode: OptimizeMode = OptimizeMode.min
    scheduler: TrialScheduler = TrialScheduler.fifo
    # ASHA: optimizer steps every trial gets before it may be stopped (null = train.checkpoint_every), and
    # 1/reduction_factor of the trials go on at each rung.
    grace_period: Optional[int] = None
    reduction_factor: float = 2.0
    # Trials running at once; null = as many as the cluster's CPUs and GPUs hold (rsvlm.tune.space).
    max_concurrent_trials: Optional[int] = None
    # CPUs of each trial's driver process (it builds the trial's data pipeline and runs its Ray Train
    # controller; the workers have their own).
    trial_cpus: float = 1.0
    # CPUs kept out of the concurrency count, for Ray Data's read and preprocessing tasks.
    reserved_cpus: float = 1.0
    # Times a failed trial is started again (each time resuming from its latest checkpoint). Failures of a
    # single worker are train.max_failures, handled inside the trial.
    max_trial_failures: int = 0
    # Where the sweep's state goes (local folder or s3://); each trial's checkpoints go under train.storage_uri.
    storage_uri: str = "${workdir}/sweeps"
    seed: int = 0

    def __post_init__(self) -> None:
        kinds = [f.name for f in fields(SearchDimension)]
        for group, keys in self.space.items():
            require(isinstance(keys, dict), f"sweep.space.{group}", "must map settings of the group to dimensions, "
                    "e.g. sweep.space.strategy.rank={grid:[32,128]}")
            for key, dimension in keys.items():
                if isinstance(dimension, SearchDimension):
                    continue
                require(isinstance(dimension, dict) and set(dimension) <= set(kinds), f"sweep.space.{group}.{key}",
                        f"must be one of {{{', '.join(k + ': …' for k in kinds)}}}", kinds)
                keys[key] = SearchDimension(**dimension)
        require(self.num_samples >= 1, "sweep.num_samples", "must be >= 1")
        require(bool(self.metric), "sweep.metric", "must name a reported metric such as val/loss")
        require(self.grace_period is None or self.grace_period >= 1, "sweep.grace_period", "must be >= 1 or null")
        require(self.reduction_factor > 1, "sweep.reduction_factor", "must be > 1")
        require(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "sweep.max_concurrent_trials",
                "must be >= 1 or null")
        require(self.trial_cpus >= 0, "sweep.trial_cpus", "must be >= 0")
        require(self.reserved_cpus >= 0, "sweep.reserved_cpus", "must be >= 0")
        require(self.max_trial_failures >= -1, "sweep.max_trial_failures", "must be >= 0 (or -1: retry forever)")
