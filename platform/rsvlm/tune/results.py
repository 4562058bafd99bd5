"""A sweep's results: one row per trial, the best one, and the files the parent MLflow run keeps."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from rsvlm.config.sweep import OptimizeMode

COMPLETED, STOPPED_EARLY, FAILED = "completed", "stopped_early", "failed"
# The settings a plot puts on its x axis and its series, when the sweep varies them.
PLOT_X, PLOT_SERIES = "strategy.rank", "strategy.num_experts"


@dataclass
class TrialOutcome:
    """One trial as it ended."""

    trial_id: str
    run_name: str  # its Ray Train run (folder under train.storage_uri) and MLflow run name
    status: str  # completed, stopped_early (by the scheduler) or failed
    values: dict[str, Any] = field(default_factory=dict)  # the swept settings, "strategy.rank": 16
    metric: Optional[float] = None  # sweep.metric at its last report
    step: Optional[int] = None  # optimizer steps it trained
    run_id: Optional[str] = None  # its MLflow run
    checkpoint_uri: Optional[str] = None
    error: Optional[str] = None


def best_trial(outcomes: Sequence[TrialOutcome], mode: OptimizeMode) -> Optional[TrialOutcome]:
    """The trial with the best final metric among those that trained to the end; None if none did.

    A trial stopped early by ASHA is left out even when its last value looks good: it was stopped because
    it was behind its peers at the same step, and its checkpoint trained for fewer steps.
    """
    candidates = [o for o in outcomes if o.status == COMPLETED and o.metric is not None and math.isfinite(o.metric)]
    if not candidates:
        return None
    pick = min if mode is OptimizeMode.min else max
    return pick(candidates, key=lambda o: o.metric)


def table_rows(outcomes: Sequence[TrialOutcome], metric: str) -> list[dict[str, Any]]:
    """Rows of the results table, ordered by trial id: the swept values, the metric, status and where."""
    keys = sorted({key for o in outcomes for key in o.values})
    return [{"trial_id": o.trial_id, **{key: o.values.get(key) for key in keys}, metric: o.metric,
             "step": o.step, "status": o.status, "mlflow_run_id": o.run_id, "checkpoint_uri": o.checkpoint_uri,
             "error": o.error}
            for o in sorted(outcomes, key=lambda o: o.trial_id)]


def write_table(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """``sweep_results.csv`` and ``sweep_results.json`` in ``folder``."""
    csv_path, json_path = folder / "sweep_results.csv", folder / "sweep_results.json"
    with csv_path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["trial_id"])
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return [csv_path, json_path]


def plot_axes(values: Sequence[str]) -> tuple[Optional[str], Optional[str]]:
    """The x axis and series of the plot: rank and experts when swept, else the first two swept settings
    (a numeric one first on x)."""
    swept = list(values)
    x = PLOT_X if PLOT_X in swept else (swept[0] if swept else None)
    rest = [key for key in swept if key != x]
    series = PLOT_SERIES if PLOT_SERIES in rest else (rest[0] if rest else None)
    return x, series


def write_plot(outcomes: Sequence[TrialOutcome], metric: str, path: Path) -> Optional[Path]:
    """A PNG of ``metric`` against the x setting, one line per series value; None when nothing to plot."""
    points = [o for o in outcomes if o.metric is not None and math.isfinite(o.metric)]
    x_key, series_key = plot_axes(sorted({key for o in outcomes for key in o.values}))
    if not points or x_key is None:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4), dpi=100)
    groups: dict[Any, list[TrialOutcome]] = {}
    for outcome in points:
        groups.setdefault(outcome.values.get(series_key) if series_key else None, []).append(outcome)
    categorical = not all(isinstance(o.values.get(x_key), (int, float)) for o in points)
    for label, group in sorted(groups.items(), key=lambda item: str(item[0])):
        group = sorted(group, key=lambda o: (str(o.values.get(x_key)) if categorical else o.values.get(x_key)))
        xs = [str(o.values.get(x_key)) if categorical else o.values.get(x_key) for o in group]
        ys = [o.metric for o in group]
        axes.plot(xs, ys, marker="o", label=f"{series_key}={label}" if series_key else None)
        for o, x, y in zip(group, xs, ys):
            if o.status != COMPLETED:  # stopped early or failed: its value is from fewer steps
                axes.annotate(o.status.replace("_", " "), (x, y), fontsize=7, textcoords="offset points",
                              xytext=(4, 4))
    if not categorical and all(isinstance(o.values.get(x_key), (int, float)) and o.values.get(x_key) > 0
                               for o in points) and x_key == PLOT_X:
        axes.set_xscale("log", base=2)  # ranks double from one setting to the next
        ticks = sorted({o.values[x_key] for o in points})
        axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.set_xlabel(x_key)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} by {x_key}" + (f" and {series_key}" if series_key else ""))
    if series_key:
        axes.legend()
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return path


def summary_lines(outcomes: Sequence[TrialOutcome], metric: str, best: Optional[TrialOutcome]) -> list[str]:
    """The results table as plain text lines for the job's output."""
    lines = []
    for row in table_rows(outcomes, metric):
        settings = " ".join(f"{k}={row[k]}" for k in row if "." in k)
        value = row[metric]
        shown = f"{value:.4g}" if isinstance(value, float) else "-"
        mark = " <- best" if best is not None and row["trial_id"] == best.trial_id else ""
        lines.append(f"{row['trial_id']}  {settings}  {metric}={shown}  step={row['step']}  {row['status']}{mark}")
    return lines
