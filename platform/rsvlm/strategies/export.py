"""Export a checkpoint as a plain transformers model: adapters merged in, loadable without rsvlm or peft.

The folder holds ``config.json``, ``model.safetensors`` (or its shards), the generation config and the
processor's files, so ``AutoModelForImageTextToText.from_pretrained(folder)`` and
``AutoProcessor.from_pretrained(folder)`` load it offline (serving stacks such as vLLM read the same layout).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Optional

from rsvlm.strategies.checkpoint import checkpoint_configs, load_checkpoint
from rsvlm.strategies.registry import build_strategy


def export_merged(checkpoint_dir: str | Path, output_dir: str | Path, task: Optional[str] = None) -> Path:
    """Merge the checkpoint in ``checkpoint_dir`` into its base model and save it in ``output_dir``.

    ``task`` picks the task folded in where the adapter depends on it (MoE-LoRA with task routing). The
    folder appears whole or not at all: it is written beside ``output_dir`` under a temporary name and
    renamed into place. An existing ``output_dir`` is refused rather than overwritten.
    """
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists; export writes a new folder (remove it or pick another)")
    loaded = load_checkpoint(checkpoint_dir)
    strategy_config, _ = checkpoint_configs(checkpoint_dir)
    strategy = build_strategy(strategy_config)
    merged = strategy.merge(loaded.model, task)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        loaded.processor.save_pretrained(staging)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
