"""Promote the `candidate` model version to `champion` when it wins on the benchmark's primary metric.

Evaluate both first with jobs/evaluate.py model_uri=models:/<name>@<alias>: only such an evaluation of the
registered version itself counts (its run is checked: rsvlm.eval.source=model_version, the same name and
version); an answer file scored with predictions= never does. A missing champion, or one without such a
score, is replaced by the candidate; on a tie the champion stays.

Local:
    python jobs/register.py benchmark=synthetic
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/register.py tracking=server
"""

from __future__ import annotations

from rsvlm.config import JobConfig, hydra_main
from rsvlm.tracking.promotion import Promotion, promote_if_better

CHAMPION = "champion"


def run(job: JobConfig) -> Promotion:
    """Compare ``tracking.alias`` (the candidate) with ``champion`` and move ``champion`` if the candidate wins."""
    promotion = promote_if_better(job.tracking.uri, job.registered_model_name, job.benchmark.name,
                                  job.benchmark.primary_metric, candidate_alias=job.tracking.alias,
                                  champion_alias=CHAMPION)
    print(promotion.summary)
    return promotion


main = hydra_main(run)

if __name__ == "__main__":
    main()
