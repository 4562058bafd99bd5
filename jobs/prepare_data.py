"""Check an instruction dataset record by record and write it as canonical JSONL shards + manifest.

    python jobs/prepare_data.py source=URI image_root=URI [format=auto|llava|geochat|fitrs|rsvqa] \
        [output=URI] [on_error=fail|skip] [answers=URI] [storage.endpoint_url=http://host:port]

The short keys stand for ``data.source``, ``data.image_root``, ``data.format``, ``data.uri``,
``data.on_error`` and ``data.answers`` of the ``data=custom`` group (implied). URIs are local paths,
``file://`` or ``s3://``; S3 credentials come from the standard AWS environment / profile chain.

    python jobs/prepare_data.py data=synthetic workdir=runs          # the demo's generated dataset
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/prepare_data.py source=s3://bucket/rs_gpt4v.json image_root=s3://bucket/images \
        output=s3://bucket/prepared/rs_gpt4v storage=s3

``on_error=fail`` exits 1 listing every problem as ``FILE:LINE: id=…: reason`` (then one ``error:`` line) and
writes nothing; ``on_error=skip`` writes the good records plus ``rejects.jsonl`` and exits 0. An ``output`` that
holds anything but an earlier prepared dataset (a file, a folder of other files, an S3 prefix with other
objects) is refused and left untouched, and so is a run that would publish no record. Staging leftovers of a
killed run (``.<output>.rsvlm-staging-*`` beside it) are removed by the next run.
"""

from __future__ import annotations

import sys

from rsvlm.config import JobConfig, hydra_main
from rsvlm.data.prepare import PrepareError, PreparedDataset, prepare_dataset
from rsvlm.data.storage import Storage

SHORTHANDS = {"source": "data.source", "image_root": "data.image_root", "format": "data.format",
              "output": "data.uri", "on_error": "data.on_error", "answers": "data.answers"}


def run(job: JobConfig) -> PreparedDataset:
    """Prepare ``job.data``; exits non-zero listing every bad record when ``data.on_error=fail``."""
    try:
        prepared = prepare_dataset(job.data, Storage(job.storage))
    except PrepareError as error:
        print(error.listing(), file=sys.stderr)  # every problem; the entry point adds the one `error:` line
        raise
    manifest = prepared.manifest
    print(f"prepared {manifest['records']} records ({manifest['rejected']} rejected, {manifest['images']} images) "
          f"→ {prepared.uri}")
    print("by task: " + ", ".join(f"{task} {count}" for task, count in manifest["by_task"].items()))
    print("by source: " + ", ".join(f"{source} {count}" for source, count in manifest["by_source"].items()))
    if manifest["rejected"]:
        print(f"rejected records and reasons: {prepared.uri.rstrip('/')}/rejects.jsonl")
    return prepared


main = hydra_main(run, shorthands=SHORTHANDS, shorthand_implies=("data=custom",))

if __name__ == "__main__":
    main()
