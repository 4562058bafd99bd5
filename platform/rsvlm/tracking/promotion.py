"""Scores kept on model versions, and moving the ``champion`` alias to a candidate that beats it.

Promotion only trusts an evaluation of the registered version itself: ``jobs/evaluate.py`` with a
``models:/`` URI tags its run ``rsvlm.eval.source=model_version`` with the version's name and number, and
writes ``eval/<benchmark>/run_id`` on the version. :func:`promote_if_better` follows that tag to the run,
checks the run is such an evaluation of that very version on that benchmark, and reads the score from the
run's metrics. A score from anything else (an answer file scored with ``predictions=``, a checkpoint folder,
a version tag written by hand) can never move an alias.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rsvlm.errors import JobError
from rsvlm.tracking.registry import registered_model

# The tag register writes on the candidate and the champion version: how they compared.
PROMOTION_TAG = "rsvlm.promotion"
# The tag on every evaluation run that says what was scored.
EVAL_SOURCE_TAG = "rsvlm.eval.source"
SOURCE_MODEL_VERSION = "model_version"  # a registered model version (models:/ URI): the only promotable source
SOURCE_MODEL = "model"  # a model that is not a registered version: a folder, a run's checkpoint, the base model
SOURCE_ANSWER_FILE = "answer_file"  # an existing answer file (predictions=), no model at all

# MLflow metric names allow letters, digits, _ - . / and spaces; category names from data may hold more.
_METRIC_NAME_UNSAFE = re.compile(r"[^\w\-. /]")


def metric_key(name: str) -> str:
    """``name`` as it is logged as an MLflow metric (characters MLflow refuses become ``_``)."""
    return _METRIC_NAME_UNSAFE.sub("_", name)


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
                  if self.previous_champion_score is not None
                  else f"v{self.previous_champion_version} (no verified score)" if self.previous_champion_version
                  else "none")
        verdict = "promoted to champion" if self.promoted else "kept the champion"
        return (f"{self.metric}: candidate v{self.candidate_version} ({self.candidate_score:.4f}) vs champion "
                f"{before}: {verdict}")


def set_model_version_tags(tracking_uri: str, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Record ``tags`` (e.g. evaluation scores) on a registered model version."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def verified_score(client: MlflowClient, name: str, version: Any, benchmark: str,
                   primary_metric: str) -> tuple[Optional[float], str]:
    """``(score, "")`` from the evaluation run of model version ``version`` on ``benchmark``, or
    ``(None, why there is none)`` when the version has no such run or its run is not an evaluation of this
    version (see the module docstring)."""
    run_id = (version.tags or {}).get(f"eval/{benchmark}/run_id")
    label = f"{name} v{version.version}"
    if not run_id:
        return None, f"{label} was never evaluated on {benchmark}"
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None, f"the evaluation run {run_id} that {label}'s scores name does not exist"
    tags = run.data.tags
    expected = {"rsvlm.job": "evaluate", EVAL_SOURCE_TAG: SOURCE_MODEL_VERSION, "rsvlm.benchmark": benchmark,
                "rsvlm.model_name": name, "rsvlm.model_version": str(version.version)}
    wrong = {key: tags.get(key) for key, value in expected.items() if tags.get(key) != value}
    if wrong:
        return None, (f"{label}'s {benchmark} score names run {run_id}, which is not an evaluation of {label} "
                      f"(source: {tags.get(EVAL_SOURCE_TAG) or 'unknown'}; "
                      f"{', '.join(f'{k}={v}' for k, v in wrong.items())})")
    if run.info.status != "FINISHED":
        return None, f"the evaluation run {run_id} of {label} did not finish ({run.info.status})"
    value = run.data.metrics.get(metric_key(f"eval/{benchmark}/{primary_metric}"))
    if value is None or not math.isfinite(value):
        return None, f"the evaluation run {run_id} of {label} has no finite eval/{benchmark}/{primary_metric}"
    return float(value), ""


def promote_if_better(tracking_uri: str, name: str, benchmark: str, primary_metric: str, *,
                      candidate_alias: str = "candidate", champion_alias: str = "champion",
                      higher_is_better: bool = True) -> Promotion:
    """Point ``champion_alias`` at the candidate when its verified ``eval/<benchmark>/<primary_metric>``
    beats the champion's.

    Both scores come from :func:`verified_score`. A candidate without one is refused (:class:`JobError`
    saying which evaluation to run); a missing champion, or one without a verified score, loses to the
    candidate; a tie keeps the champion. The comparison is written on both versions as a tag, so the UI
    shows why.
    """
    metric = f"eval/{benchmark}/{primary_metric}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    candidate_uri = f"models:/{name}@{candidate_alias}"
    aliases = registered_model(client, name, candidate_uri, tracking_uri).aliases or {}
    if candidate_alias not in aliases:
        raise JobError(candidate_uri, f"registered model {name!r} has no alias {candidate_alias!r} (aliases: "
                                      f"{dict(sorted(aliases.items())) or 'none'})",
                       f"python jobs/finetune.py (or jobs/sweep.py) registers a version as @{candidate_alias}")
    candidate = client.get_model_version(name, aliases[candidate_alias])
    candidate_score, why = verified_score(client, name, candidate, benchmark, primary_metric)
    if candidate_score is None:
        raise JobError(f"{candidate_uri} (v{candidate.version})", f"no verified {metric} score: {why}",
                       f"evaluate the version itself first: python jobs/evaluate.py model_uri={candidate_uri} "
                       f"benchmark={benchmark}")
    champion_version, champion_score = None, None
    if champion_alias in aliases:
        champion = client.get_model_version(name, aliases[champion_alias])
        champion_version = str(champion.version)
        champion_score, _ = verified_score(client, name, champion, benchmark, primary_metric)
    if champion_score is None:
        promoted = champion_version != str(candidate.version)
    elif champion_version == str(candidate.version):
        promoted = False
    else:
        promoted = candidate_score > champion_score if higher_is_better else candidate_score < champion_score
    if promoted:
        client.set_registered_model_alias(name, champion_alias, candidate.version)
    verdict = (f"{metric}: candidate v{candidate.version}={candidate_score:.6g} vs champion "
               f"{'v' + champion_version if champion_version else 'none'}"
               f"={f'{champion_score:.6g}' if champion_score is not None else 'n/a'}: "
               f"{'promoted' if promoted else 'not promoted'}")
    # On both versions, so either one's page in the UI says how they compared.
    for version in {str(candidate.version), *([champion_version] if champion_version else [])}:
        client.set_model_version_tag(name, version, PROMOTION_TAG, verdict)
    return Promotion(promoted, str(candidate.version), candidate_score, champion_version, champion_score, metric)

