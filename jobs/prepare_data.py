"""Check an instruction dataset record by record and write it as canonical JSONL shards + manifest.

Local:
    python jobs/prepare_data.py data=synthetic workdir=runs
    python jobs/prepare_data.py data=llava data.source=/data/rs_gpt4v.json data.image_root=/data/images \
        data.on_error=skip
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/prepare_data.py data=llava data.source=… data.image_root=…
"""

from __future__ import annotations

import sys

from rsvlm.config import JobConfig, hydra_main
from rsvlm.data.prepare import PrepareError, PreparedDataset, prepare_dataset


def run(job: JobConfig) -> PreparedDataset:
    """Prepare ``job.data``; exits non-zero listing every bad record when ``data.on_error=fail``."""
    try:
        prepared = prepare_dataset(job.data)
    except PrepareError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
    manifest = prepared.manifest
    print(f"prepared {manifest['records']} records ({manifest['rejected']} rejected, {manifest['images']} images) "
          f"→ {prepared.path}")
    print("by task: " + ", ".join(f"{task} {count}" for task, count in manifest["by_task"].items()))
    return prepared


main = hydra_main(run)

if __name__ == "__main__":
    main()
