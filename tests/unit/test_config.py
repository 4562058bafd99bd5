"""Config composition: every YAML composes; typos and bad values fail with one line naming key and choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rsvlm.config import ConfigError, compose, conf_dir, from_dict, to_dict
from rsvlm.config.strategy import StrategyName, Trainability

ROOT = Path(__file__).resolve().parents[2]
GROUP_OPTIONS = sorted((group.name, option.stem) for group in conf_dir().iterdir() if group.is_dir()
                       for option in group.glob("*.yaml"))
# Options whose YAML leaves a value for the user to fill in (``???``).
NEEDS = {("data", "custom"): ["data.source=/tmp/x.json", "data.image_root=/tmp"]}
# Groups a command line adds (``+env=kuberay``) instead of choosing from conf/config.yaml's defaults.
APPENDED = {"env"}


def test_every_group_has_options():
    groups = {group for group, _ in GROUP_OPTIONS}
    assert {"data", "model", "strategy", "optim", "train", "scaling", "tracking", "benchmark"} <= groups


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_yaml_composes(tmp_path, group, option):
    choice = f"+{group}={option}" if group in APPENDED else f"{group}={option}"
    job = compose([f"workdir={tmp_path}", choice, *NEEDS.get((group, option), [])])
    assert job.workdir == str(tmp_path)
    # Interpolations are resolved against the absolute workdir (env= points tracking at a server).
    assert job.tracking.uri.startswith("sqlite:///" + str(tmp_path)) or group in ("tracking", "env")


def test_defaults_are_the_embedded_demo(tmp_path):
    job = compose([f"workdir={tmp_path}"])
    assert job.model.name_or_path == "tiny"
    assert job.strategy.name is StrategyName.lora
    assert (job.strategy.vision_tower, job.strategy.projector, job.strategy.llm) == (
        Trainability.frozen, Trainability.full, Trainability.adapter)
    assert job.data.uri == f"{tmp_path}/data/prepared"
    assert job.registered_model_name == "rsvlm-tiny-lora"


def test_relative_workdir_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = compose(["workdir=somewhere"])
    assert job.workdir == str(tmp_path / "somewhere")


def test_round_trip_through_plain_dict(tmp_path):
    job = compose([f"workdir={tmp_path}", "strategy.rank=8"])
    plain = to_dict(job)
    assert plain["strategy"]["name"] == "lora" and plain["strategy"]["rank"] == 8
    assert from_dict(plain) == job


@pytest.mark.parametrize("override,key,choices", [
    ("strategy.name=lorra", "strategy.name", ["full", "lora"]),
    ("strategy=lorra", "strategy=lorra", ["full", "lora"]),
    ("strategy.rnak=8", "strategy.rnak", ["name", "rank", "alpha"]),
    ("strategy.rank=abc", "strategy.rank", None),
    ("strategy.rank=0", "strategy.rank", None),
    ("optim.lr=-1", "optim.lr", None),
    ("strategy.llm=frozen", "strategy.llm", ["adapter"]),
    ("scaling.num_workers=-1", "scaling.num_workers", None),
    ("data.synthetic.object_scale=3", "data.synthetic.object_scale", None),
    ("align.micro_batch_size=0", "align.micro_batch_size", None),
])
def test_bad_values_name_the_key_and_choices(tmp_path, override, key, choices):
    with pytest.raises(ConfigError) as caught:
        compose([f"workdir={tmp_path}", override])
    error = caught.value
    assert error.key == key
    assert "\n" not in str(error)
    for choice in choices or []:
        assert choice in error.choices


def test_unknown_top_level_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError) as caught:
        compose([f"workdir={tmp_path}", "+learning_rate=3"])
    assert caught.value.key == "learning_rate" and "strategy" in caught.value.choices


def test_missing_required_value_is_named(tmp_path):
    with pytest.raises(ConfigError) as caught:
        compose([f"workdir={tmp_path}", "data=custom"])
    assert "data.source" in str(caught.value)


def test_job_prints_one_line_and_exits_2(tmp_path):
    """Through a real job entry point, as a user types it: one line on stderr, no traceback."""
    result = subprocess.run([sys.executable, "jobs/finetune.py", f"workdir={tmp_path}", "strategy.name=lorra"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: strategy.name: invalid value 'lorra' (choices: full, lora, moe_lora, align)"]


def test_job_shorthands_expand_to_data_keys_and_imply_the_custom_group():
    from rsvlm.config import expand_shorthands

    shorthands = {"source": "data.source", "output": "data.uri"}
    assert expand_shorthands(["source=s3://b/x.json", "output=/tmp/p", "train.seed=1"], shorthands,
                             ("data=custom",)) == ["data=custom", "data.source=s3://b/x.json", "data.uri=/tmp/p",
                                                   "train.seed=1"]
    # An explicit group choice wins, and without shorthands nothing changes.
    assert expand_shorthands(["data=synthetic", "source=x"], shorthands, ("data=custom",)) == [
        "data=synthetic", "data.source=x"]
    assert expand_shorthands(["data.source=x"], shorthands, ("data=custom",)) == ["data.source=x"]
