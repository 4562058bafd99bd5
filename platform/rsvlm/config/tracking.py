"""Experiment tracking settings (``tracking`` group): the MLflow server, experiment and registered model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rsvlm.config.checks import require


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///${workdir}/mlflow.db"
    # Where a new experiment keeps its artifacts; beside the database for the embedded default.
    artifact_location: str = "${workdir}/mlartifacts"
    experiment: str = "rsvlm"
    # None = rsvlm-<model.name>-<strategy.name>.
    registered_model: Optional[str] = None
    alias: str = "candidate"
    # Seconds between samples of CPU, memory, disk, network and GPU into system/* metrics (rank 0's machine).
    # 0 = off.
    system_metrics_interval_s: float = 10.0
    # Tags put on every run a job creates (owner, ticket…); a Hydra multirun adds rsvlm.multirun=<its id>.
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.system_metrics_interval_s >= 0, "tracking.system_metrics_interval_s", "must be >= 0")
