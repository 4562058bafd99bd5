"""Search spaces: the typed ``sweep.space`` as Ray Tune domains, each trial's values as a job config.

``sweep.space`` is keyed like the config it changes (``space.strategy.rank`` sweeps ``strategy.rank``), so a
trial's settings are merged into the sweep's own config and checked by the same schema as any job; a trial
is then logged with the same params as a plain finetune run. Everything here is a pure function.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import fields, is_dataclass
from typing import Any, Iterator, Mapping, Optional

from ray import tune

from rsvlm.config import from_dict, to_dict
from rsvlm.config.errors import ConfigError
from rsvlm.config.job import JobConfig
from rsvlm.config.sweep import SearchAlgorithm, SearchDimension, SweepConfig

# The kinds of a SearchDimension, in the order they are documented.
KINDS = tuple(f.name for f in fields(SearchDimension))
# Groups a sweep may change: every part of a job but the sweep itself and what says where things are.
_UNSWEEPABLE_GROUPS = ("sweep", "storage", "tracking", "export", "benchmark")
# Enough to check every grid combination on the driver, not so many that checking takes long.
_MAX_CHECKED_COMBINATIONS = 4096


def dimensions(sweep: SweepConfig) -> dict[str, tuple[str, list[Any]]]:
    """``{"strategy.rank": ("grid", [32, 128]), …}``: each swept key with its kind and values, checked."""
    found: dict[str, tuple[str, list[Any]]] = {}
    for group, keys in sweep.space.items():
        for key, dimension in keys.items():
            name = f"{group}.{key}"
            where = f"sweep.space.{name}"
            kinds = [kind for kind in KINDS if getattr(dimension, kind) is not None]
            if len(kinds) != 1:
                raise ConfigError(where, f"set exactly one of {', '.join(KINDS)} (found {', '.join(kinds) or 'none'})")
            kind = kinds[0]
            values = list(getattr(dimension, kind))
            if kind in ("grid", "choice"):
                if not values:
                    raise ConfigError(where, f"{kind} needs at least one value")
            else:
                if len(values) != 2 or not values[0] < values[1]:
                    raise ConfigError(where, f"{kind} takes [low, high] with low < high, got {values}")
                if kind == "loguniform" and values[0] <= 0:
                    raise ConfigError(where, f"loguniform needs low > 0, got {values[0]}")
            found[name] = (kind, values)
    return found


def validate_space(job: JobConfig) -> dict[str, tuple[str, list[Any]]]:
    """Check ``job.sweep`` against ``job`` on the driver, before any trial starts; returns :func:`dimensions`.

    Every key must be a setting of the schema; the dimension kinds must suit ``sweep.search``; and every
    grid combination (and each other value or bound, with the rest as configured) must make a valid job.
    """
    sweep = job.sweep
    if not sweep.space:
        raise ConfigError("sweep.space", "is empty: name at least one setting to sweep, e.g. "
                          "sweep.space.strategy.rank={grid:[32,128]} (or pick a preset: sweep=smoke)")
    for group, keys in sweep.space.items():
        section = getattr(job, group, None)
        if group in _UNSWEEPABLE_GROUPS or not is_dataclass(section):
            choices = [f.name for f in fields(JobConfig) if is_dataclass(getattr(job, f.name))
                       and f.name not in _UNSWEEPABLE_GROUPS]
            raise ConfigError(f"sweep.space.{group}", "is not a group a sweep can change", choices)
        names = [f.name for f in fields(section)]
        for key in keys:
            if key not in names:
                raise ConfigError(f"sweep.space.{group}.{key}", f"{group} has no such setting", names)
    found = dimensions(sweep)
    if sweep.search is SearchAlgorithm.grid:
        for name, (kind, _) in found.items():
            if kind != "grid":
                raise ConfigError(f"sweep.space.{name}", f"search=grid takes grid dimensions only, not {kind} "
                                  "(use search=random or search=optuna to sample)")
    if sweep.search is SearchAlgorithm.optuna:
        for name, (kind, _) in found.items():
            if kind == "grid":
                raise ConfigError(f"sweep.space.{name}", "search=optuna samples every dimension: write "
                                  "choice instead of grid")
    base = to_dict(job)
    grid = {name: values for name, (kind, values) in found.items() if kind == "grid"}
    for combination in itertools.islice(_combinations(grid), _MAX_CHECKED_COMBINATIONS):
        _check(base, combination, ", ".join(f"{k}={v}" for k, v in combination.items()))
    for name, (kind, values) in found.items():
        if kind != "grid":
            for value in values:
                _check(base, {name: value}, f"{name}={value}")
    return found


def _combinations(grid: Mapping[str, list[Any]]) -> Iterator[dict[str, Any]]:
    names = list(grid)
    for values in itertools.product(*(grid[name] for name in names)):
        yield dict(zip(names, values))


def _check(base: dict[str, Any], values: Mapping[str, Any], label: str) -> None:
    try:
        from_dict(merge_values(base, values))
    except ConfigError as error:
        raise ConfigError("sweep.space", f"the trial with {label} is not a valid job: {error}") from error
    except Exception as error:  # noqa: BLE001 - OmegaConf's type errors: one line naming the trial
        raise ConfigError("sweep.space", f"the trial with {label} is not a valid job: "
                          f"{str(error).splitlines()[0]}") from error


def search_space(sweep: SweepConfig) -> dict[str, dict[str, Any]]:
    """Tune's ``param_space``, nested like ``sweep.space``: ``{"strategy": {"rank": tune.grid_search([…])}}``."""
    space: dict[str, dict[str, Any]] = {}
    for name, (kind, values) in dimensions(sweep).items():
        group, key = name.split(".", 1)
        space.setdefault(group, {})[key] = _domain(kind, values)
    return space


def _domain(kind: str, values: list[Any]) -> Any:
    if kind == "grid":
        return tune.grid_search(values)
    if kind == "choice":
        return tune.choice(values)
    if kind == "uniform":
        return tune.uniform(float(values[0]), float(values[1]))
    if kind == "loguniform":
        return tune.loguniform(float(values[0]), float(values[1]))
    return tune.randint(int(values[0]), int(values[1]))


def flat_values(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's nested ``{"strategy": {"rank": 16}}`` as ``{"strategy.rank": 16}`` (params, tables)."""
    return {f"{group}.{key}": value for group, keys in trial_config.items() for key, value in keys.items()}


def nested_values(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The inverse of :func:`flat_values`."""
    nested: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        group, key = name.split(".", 1)
        nested.setdefault(group, {})[key] = value
    return nested


def merge_values(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a job as a dict) with ``{"strategy.rank": 16, …}`` set in it; ``base`` is not changed."""
    merged = {group: dict(section) if isinstance(section, Mapping) else section for group, section in base.items()}
    for name, value in values.items():
        group, key = name.split(".", 1)
        merged[group][key] = value
    return merged


def trial_job(base: Mapping[str, Any], trial_config: Mapping[str, Any], run_name: str) -> JobConfig:
    """The job one trial runs: the sweep's config with the trial's values, under its own ``train.run_name``."""
    return from_dict(merge_values(base, {**flat_values(trial_config), "train.run_name": run_name}))


def trial_count(sweep: SweepConfig) -> Optional[int]:
    """How many trials the sweep runs (grid dimensions are crossed, then repeated ``num_samples`` times)."""
    grid_sizes = [len(values) for kind, values in dimensions(sweep).values() if kind == "grid"]
    return math.prod(grid_sizes) * sweep.num_samples


def trial_resources(job: JobConfig) -> dict[str, float]:
    """What one trial holds while it runs: its driver's CPUs plus its Ray Train workers' CPUs and GPUs."""
    scaling = job.scaling
    resources = {"CPU": job.sweep.trial_cpus + scaling.num_workers * scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = float(scaling.num_workers)
    return resources


def max_concurrent_trials(cluster: Mapping[str, float], job: JobConfig, trials: Optional[int] = None) -> int:
    """Trials to run at once: ``sweep.max_concurrent_trials``, else as many as ``cluster``'s CPUs (less
    ``sweep.reserved_cpus`` for Ray Data) and GPUs hold at :func:`trial_resources` each; at least 1, at most
    ``trials``.

    Without this limit Tune starts every trial's driver at once, and the drivers whose workers do not fit
    wait for resources, holding CPUs Ray Data needs (the sweep can then hang).
    """
    if job.sweep.max_concurrent_trials is not None:
        limit = job.sweep.max_concurrent_trials
    else:
        fits = []
        for resource, need in trial_resources(job).items():
            if need > 0:
                available = cluster.get(resource, 0.0) - (job.sweep.reserved_cpus if resource == "CPU" else 0.0)
                # The small tolerance keeps 1.0 / 0.5 from landing just under 2.
                fits.append(math.floor(available / need + 1e-9))
        limit = max(1, min(fits)) if fits else 1
    return min(limit, trials) if trials else limit
