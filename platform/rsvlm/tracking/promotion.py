"""Scores kept on model versions, and moving the ``champion`` alias to a candidate that beats it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

from mlflow.tracking import MlflowClient


@dataclass
class Promotion:
    promoted: bool
    candidate_version: str
    candidate_score: float
    previous_champion_version: Optional[str]
    previous_champion_score: Optional[float]
    metric: str

    @property
    def champion_version(self) -> Optional[str]:
        """The version the champion alias points at now."""
        return self.candidate_version if self.promoted else self.previous_champion_version

    @property
    def summary(self) -> str:
        before = (f"v{self.previous_champion_version} ({self.previous_champion_score:.4f})"
                  if self.previous_champion_score is not None else "none")
        verdict = "promoted to champion" if self.promoted else "kept the champion"
        return (f"{self.metric}: candidate v{self.candidate_version} ({self.candidate_score:.4f}) vs champion "
                f"{before}: {verdict}")


def set_model_version_tags(tracking_uri: str, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Record ``tags`` (e.g. evaluation scores) on a registered model version."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def promote_if_better(tracking_uri: str, name: str, metric: str, *, candidate_alias: str = "candidate",
                      champion_alias: str = "champion", higher_is_better: bool = True) -> Promotion:
    """Point ``champion_alias`` at the candidate when its ``metric`` tag beats the champion's.

    A missing champion (or one never scored on ``metric``) loses to any scored candidate; a tie keeps the
    champion. The comparison is written on the candidate version as tags, so the UI shows why.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    candidate = client.get_model_version_by_alias(name, candidate_alias)
    candidate_score = _score(candidate.tags, metric)
    if candidate_score is None:
        raise LookupError(f"{name} v{candidate.version} (@{candidate_alias}) has no '{metric}' score yet: "
                          f"run jobs/evaluate.py on it first")
    champion_version, champion_score = None, None
    aliases = client.get_registered_model(name).aliases
    if champion_alias in aliases:
        champion = client.get_model_version(name, aliases[champion_alias])
        champion_version, champion_score = champion.version, _score(champion.tags, metric)
    if champion_score is None:
        promoted = True
    elif champion_version == candidate.version:
        promoted = False
    else:
        promoted = candidate_score > champion_score if higher_is_better else candidate_score < champion_score
    if promoted:
        client.set_registered_model_alias(name, champion_alias, candidate.version)
    client.set_model_version_tag(name, candidate.version, "rsvlm.promotion",
                                 f"{metric}={candidate_score:.6g} vs champion "
                                 f"{'v' + champion_version if champion_version else 'none'}"
                                 f"={champion_score if champion_score is not None else 'n/a'}: "
                                 f"{'promoted' if promoted else 'not promoted'}")
    return Promotion(promoted, candidate.version, candidate_score, champion_version, champion_score, metric)


def _score(tags: Mapping[str, str], metric: str) -> Optional[float]:
    try:
        value = float(tags[metric])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None
