"""Export a trained model as a plain transformers folder: adapters merged in, safetensors, processor beside it.

    python jobs/export.py checkpoint=URI output=FOLDER [task=NAME]

``checkpoint`` is a checkpoint folder, ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or
``runs:/<run_id>/<path>`` (it stands for ``model_uri``; default: the registered model's ``tracking.alias``).
``output`` (``export.output``) is the folder to create; ``task`` (``export.task``) picks the task merged into a
task-routed MoE-LoRA adapter. The result loads with ``AutoModelForImageTextToText.from_pretrained(output)``.

Local:
    python jobs/export.py checkpoint=models:/rsvlm-tiny-lora@candidate output=runs/export/tiny-lora
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/export.py checkpoint=models:/rsvlm-tiny-lora@champion output=/models/tiny-lora tracking=server
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rsvlm.config import ConfigError, JobConfig, hydra_main
from rsvlm.strategies.export import export_merged
from rsvlm.tracking import resolve_model_uri

SHORTHANDS = {"checkpoint": "model_uri", "output": "export.output", "task": "export.task"}


def run(job: JobConfig) -> Path:
    """Merge ``job.model_uri`` (default: the registered model's ``tracking.alias``) into ``export.output``."""
    if not job.export.output:
        raise ConfigError("output", "required: the folder to write the merged model to")
    model_uri = job.target_model_uri
    if model_uri.startswith(("models:/", "runs:/")) and not job.tracking.enabled:
        raise ConfigError("checkpoint", "a models:/ or runs:/ URI needs tracking.enabled=true", None)
    output = Path(job.export.output).expanduser().absolute()
    if output.exists():
        raise ConfigError("output", f"{output} already exists; export writes a new folder")
    with tempfile.TemporaryDirectory(prefix="rsvlm-export-") as scratch:
        resolved = resolve_model_uri(model_uri, job.tracking.uri, scratch)
        exported = export_merged(resolved.local_path, output, task=job.export.task)
    source = f"{resolved.name} version {resolved.version}" if resolved.name else model_uri
    print(f"exported {source} → {exported}")
    return exported


main = hydra_main(run, shorthands=SHORTHANDS)

if __name__ == "__main__":
    main()
