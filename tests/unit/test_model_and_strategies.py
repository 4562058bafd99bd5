"""The tiny model is reproducible; strategies train the right parts and their checkpoints round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from rsvlm.config import compose
from rsvlm.model.build import load_model
from rsvlm.model.parts import model_parts, trainable_parameter_counts
from rsvlm.strategies import build_strategy
from rsvlm.strategies.checkpoint import checkpoint_configs, load_checkpoint, save_checkpoint
from support import llava_batch


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return compose([f"workdir={tmp_path_factory.mktemp('w')}", "strategy.rank=8", "strategy.alpha=16"])


def test_tiny_model_is_deterministic(job):
    first, second = load_model(job.model), load_model(job.model)
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    loss = first.model(**llava_batch(first)).loss
    assert torch.isfinite(loss)


def test_parts_cover_the_model(job):
    loaded = load_model(job.model)
    parts = model_parts(loaded.model)
    assert [name for name, _ in parts["projector"]] == ["model.multi_modal_projector"]
    counted = sum(c["total"] for c in trainable_parameter_counts(loaded.model).values())
    assert counted == sum(p.numel() for p in loaded.model.parameters())


def test_lora_trains_adapters_and_projector_only(job):
    loaded = load_model(job.model)
    model = build_strategy(job.strategy).apply(loaded.model)
    counts = trainable_parameter_counts(model)
    assert counts["vision_tower"]["trainable"] == 0
    projector = model_parts(model)["projector"][0][1]
    assert counts["projector"]["trainable"] >= sum(p.numel() for p in projector.parameters()) // 2
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    llm_trainable = [n for n in trainable if "language_model" in n or "lm_head" in n]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    assert not any("lm_head" in n for n in trainable)


def test_lora_checkpoint_round_trip_keeps_the_projector(job, tmp_path):
    loaded = load_model(job.model)
    model = build_strategy(job.strategy).apply(loaded.model)
    with torch.no_grad():  # make the trained state differ from a fresh one
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    inputs = llava_batch(loaded)
    model.eval()
    expected = model(**inputs).logits
    save_checkpoint(tmp_path, model, loaded.processor, job, {"step": 1})
    spec = json.loads((tmp_path / "strategy.json").read_text())
    assert spec["name"] == "lora" and spec["base_model"]["name_or_path"] == "tiny"
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert any("multi_modal_projector" in key for key in keys)
    restored = load_checkpoint(tmp_path)
    torch.testing.assert_close(restored.model(**inputs).logits, expected)
    merged = build_strategy(job.strategy).merge(restored.model)
    assert type(merged).__name__ == "LlavaForConditionalGeneration"
    torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-4, rtol=1e-4)


def test_full_checkpoint_round_trip(tmp_path):
    job = compose([f"workdir={tmp_path}", "strategy=full"])
    loaded = load_model(job.model)
    model = build_strategy(job.strategy).apply(loaded.model)
    counts = trainable_parameter_counts(model)
    assert counts["vision_tower"]["trainable"] == 0
    assert counts["llm"]["trainable"] == counts["llm"]["total"]
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.weight.add_(0.1)
    inputs = llava_batch(loaded)
    expected = model.eval()(**inputs).logits
    save_checkpoint(tmp_path / "ckpt", model, loaded.processor, job)
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    torch.testing.assert_close(load_checkpoint(tmp_path / "ckpt").model(**inputs).logits, expected)


def test_a_saved_llava_folder_loads_by_path(job, tmp_path):
    """The path users take with real checkpoints (`model.name_or_path=/models/llava-1.5-7b-hf`), offline."""
    from rsvlm.config.model import ModelConfig
    from rsvlm.model.build import load_processor

    tiny = load_model(job.model)
    tiny.model.save_pretrained(tmp_path / "llava")
    tiny.processor.save_pretrained(tmp_path / "llava")
    config = ModelConfig(name="saved", name_or_path=str(tmp_path / "llava"))
    loaded = load_model(config)
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration"
    assert loaded.image_token_count == tiny.image_token_count == 16
    inputs = llava_batch(tiny)
    torch.testing.assert_close(loaded.model.eval()(**inputs).logits, tiny.model.eval()(**inputs).logits)
    processor, image_tokens = load_processor(config)
    assert image_tokens == 16 and processor.tokenizer.get_vocab() == tiny.tokenizer.get_vocab()


# --------------------------------------------------------------------------- model.name_or_path, offline


@pytest.mark.parametrize("name", ["/nonexistent", "./no/such/folder", "../no-such-folder", "~/no-such-folder-rsvlm"])
def test_a_missing_model_folder_is_said_to_be_missing(name):
    from rsvlm.config.model import ModelConfig
    from rsvlm.errors import JobError
    from rsvlm.model.build import load_pretrained, load_processor

    expected = (f"model.name_or_path={name}: no such folder (give a local folder with config.json or a hub id "
                "such as llava-hf/llava-1.5-7b-hf)")
    for load in (lambda: load_processor(ModelConfig(name="x", name_or_path=name)), lambda: load_pretrained(ModelConfig(name="x", name_or_path=name))):
        with pytest.raises(JobError) as caught:
            load()
        assert str(caught.value) == expected


def test_a_folder_without_config_json_or_a_file_is_not_a_model(tmp_path):
    from rsvlm.errors import JobError
    from rsvlm.model.build import resolve_model_source

    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(JobError, match=r"the folder has no config.json, so it is not a saved transformers model"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(JobError, match=r"weights.safetensors: is a file, not a model folder"):
        resolve_model_source(str(tmp_path / "weights.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(str(tmp_path)) == str(tmp_path)


def test_paths_and_hub_ids_are_told_apart(tmp_path, monkeypatch):
    from rsvlm.errors import JobError
    from rsvlm.model.build import looks_like_path, resolve_model_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert looks_like_path("org/model")  # an existing relative folder wins over the hub id of that name
    assert not looks_like_path("llava-hf/llava-1.5-7b-hf") and not looks_like_path("gpt2")
    assert all(looks_like_path(p) for p in ["/models/x", "./x", "../x", "~/x", ".", ".."])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert resolve_model_source("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"  # nothing fetched
    with pytest.raises(JobError, match=r"model.name_or_path=a/b/c: neither an existing folder nor a hub id"):
        resolve_model_source("a/b/c")


def test_an_uncached_hub_id_while_offline_says_so(tmp_path, monkeypatch):
    from rsvlm.errors import JobError
    from rsvlm.model.build import resolve_model_source

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(JobError) as caught:
        resolve_model_source("llava-hf/llava-1.5-7b-hf")
    assert str(caught.value).startswith("model.name_or_path=llava-hf/llava-1.5-7b-hf: not in the local Hugging "
                                        "Face cache, and HF_HUB_OFFLINE=1 forbids downloading it (download it once")
    # The same id once it is in the cache (the layout huggingface_hub writes) is fine offline.
    snapshot = tmp_path / "hub" / "models--llava-hf--llava-1.5-7b-hf" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--llava-hf--llava-1.5-7b-hf" / "refs").mkdir()
    (tmp_path / "hub" / "models--llava-hf--llava-1.5-7b-hf" / "refs" / "main").write_text("abc123")
    assert resolve_model_source("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"


@pytest.mark.parametrize("strategy", ["lora", "moe_lora", "full"])
def test_every_strategy_saves_the_same_from_a_gathered_state_dict(strategy, tmp_path):
    """One ``save`` signature for all: a gathered (FSDP) state_dict gives the checkpoint the model itself gives."""
    from safetensors.torch import load_file

    job = compose([f"workdir={tmp_path}", f"strategy={strategy}", "strategy.rank=4", "strategy.alpha=8"])
    loaded = load_model(job.model)
    strategy_object = build_strategy(job.strategy)
    model = strategy_object.apply(loaded.model)
    strategy_object.save(model, tmp_path / "own")
    strategy_object.save(model, tmp_path / "gathered", {k: v.clone() for k, v in model.state_dict().items()})
    weights = sorted(p.name for p in (tmp_path / "own").glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in (tmp_path / "gathered").glob("*.safetensors"))
    for name in weights:
        own, gathered = load_file(tmp_path / "own" / name), load_file(tmp_path / "gathered" / name)
        assert own.keys() == gathered.keys()
        assert all(torch.equal(own[key], gathered[key]) for key in own)


def test_strategy_defaults_are_the_plain_ones(job):
    loaded = load_model(job.model)
    lora = build_strategy(job.strategy)
    model = lora.apply(loaded.model)
    assert lora.aux_loss(model) is None
    assert lora.set_batch_tasks(model, ["vqa"]) is None
    full = build_strategy(compose(["strategy=full"]).strategy)
    assert full.merge(loaded.model, "vqa") is loaded.model


def test_the_chat_template_is_the_models_and_travels_with_the_checkpoint(job, tmp_path):
    from rsvlm.config.model import ChatTemplateName
    from rsvlm.data.template import VICUNA_V1, chat_template

    assert job.model.chat_template is ChatTemplateName.vicuna_v1 and chat_template(job.model.chat_template) is VICUNA_V1
    loaded = load_model(job.model)
    assert loaded.config.chat_template is ChatTemplateName.vicuna_v1
    model = build_strategy(job.strategy).apply(loaded.model)
    save_checkpoint(tmp_path, model, loaded.processor, job)
    _, model_config = checkpoint_configs(tmp_path)
    assert model_config.chat_template is ChatTemplateName.vicuna_v1
    assert load_checkpoint(tmp_path).config == model_config
