"""Export merges a checkpoint's adapters into a plain transformers folder that loads offline with Auto classes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from rsvlm.config import compose
from rsvlm.model.build import load_model
from rsvlm.strategies import build_strategy
from rsvlm.strategies.checkpoint import save_checkpoint
from rsvlm.strategies.export import export_merged
from support import llava_batch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory):
    """A LoRA checkpoint whose adapters change the function (lora_B non-zero), and that function's logits."""
    folder = tmp_path_factory.mktemp("export")
    job = compose([f"workdir={folder}", "strategy.rank=8", "strategy.alpha=16", "tracking=off"])
    loaded = load_model(job.model)
    inputs = llava_batch(loaded)
    base = loaded.model.eval()(**inputs).logits.detach()
    model = build_strategy(job.strategy).apply(loaded.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:  # lora_A, lora_B and the projector's trained copy
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    expected = model.eval()(**inputs).logits.detach()
    assert (expected - base).abs().max() > 1e-2  # the adapters matter, so a lost adapter would show
    save_checkpoint(folder / "checkpoint", model, loaded.processor, job, {"step": 0})
    return job, folder / "checkpoint", inputs, expected


def test_exported_lora_model_loads_with_auto_classes_and_computes_the_same(lora_checkpoint, tmp_path):
    _, checkpoint, inputs, expected = lora_checkpoint
    output = export_merged(checkpoint, tmp_path / "exported")
    assert output == tmp_path / "exported"
    files = {p.name for p in output.rglob("*") if p.is_file()}
    assert not any(name.startswith("adapter_") for name in files), files
    weights = {name for name in files if name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))}
    assert weights and all(name.endswith(".safetensors") for name in weights), weights
    assert "strategy.json" not in files  # a plain transformers folder, not an rsvlm checkpoint
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no staging folder left beside it

    model = AutoModelForImageTextToText.from_pretrained(output).eval()
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert not any("lora_" in name for name, _ in model.named_parameters())
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    processor = AutoProcessor.from_pretrained(output)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_export_refuses_an_existing_folder(lora_checkpoint, tmp_path):
    _, checkpoint, _, _ = lora_checkpoint
    (tmp_path / "exported").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_merged(checkpoint, tmp_path / "exported")


def test_export_job_takes_a_checkpoint_folder(lora_checkpoint, tmp_path):
    """Through the job's entry point as a user types it: checkpoint= and output= are its short keys."""
    _, checkpoint, inputs, expected = lora_checkpoint
    job = [sys.executable, "jobs/export.py", f"workdir={tmp_path}", "tracking=off", f"checkpoint={checkpoint}"]
    missing = subprocess.run(job, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "error: output: required" in missing.stderr
    result = subprocess.run([*job, f"output={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"→ {tmp_path / 'out'}" in result.stdout
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-4, rtol=1e-4)


def test_export_job_defaults_to_the_registered_candidate(lora_checkpoint, tmp_path):
    from rsvlm.tracking import create_run, make_logger, register_model_version

    _, checkpoint, inputs, expected = lora_checkpoint
    job = compose([f"workdir={tmp_path}"])
    run_id = create_run(job.tracking, "train")
    make_logger(job.tracking.uri, run_id, True).log_artifacts(checkpoint, artifact_path="checkpoint")
    register_model_version(job.tracking.uri, job.registered_model_name, run_id, "checkpoint", alias="candidate")
    result = subprocess.run([sys.executable, "jobs/export.py", f"workdir={tmp_path}", f"output={tmp_path / 'out'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"exported rsvlm-tiny-lora version 1 → {tmp_path / 'out'}" in result.stdout
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-4, rtol=1e-4)


def test_full_checkpoint_exports_as_is(tmp_path):
    job = compose([f"workdir={tmp_path}", "strategy=full", "tracking=off"])
    loaded = load_model(job.model)
    model = build_strategy(job.strategy).apply(loaded.model)
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.weight.add_(0.1)
    inputs = llava_batch(loaded)
    expected = model.eval()(**inputs).logits
    save_checkpoint(tmp_path / "checkpoint", model, loaded.processor, job)
    exported = AutoModelForImageTextToText.from_pretrained(export_merged(tmp_path / "checkpoint", tmp_path / "out"))
    torch.testing.assert_close(exported.eval()(**inputs).logits, expected)
