"""A dataset prepared on S3 trains through the finetune job with two Ray Train workers on CPU, and its
checkpoints go to S3 too."""

from __future__ import annotations

import math


from rsvlm.data.prepare import prepare_dataset
from rsvlm.data.storage import Storage
from rsvlm.data.synthetic import write_dataset
from rsvlm.train.finetune import run_finetune
from support import upload_tree


def test_two_workers_train_from_a_dataset_prepared_on_s3(s3_endpoint, s3_prefix, tmp_path, compose_job, local_ray):
    write_dataset(tmp_path / "raw", num_train_images=24, num_test_images=0, image_size=64)
    job = compose_job(f"storage.endpoint_url={s3_endpoint}", "data=custom",
                      f"data.source={s3_prefix}/raw/train.json", f"data.image_root={s3_prefix}/raw",
                      f"data.uri={s3_prefix}/prepared", "data.max_length=192", "scaling=cpu2",
                      "train.max_steps=6", "train.log_every=3", "train.checkpoint_every=3",
                      "train.keep_checkpoints=1", "train.val_batches=0", f"train.storage_uri={s3_prefix}/runs",
                      "train.run_name=on-s3", "tracking=off")
    storage = Storage(job.storage)
    upload_tree(storage, tmp_path / "raw", f"{s3_prefix}/raw")
    prepared = prepare_dataset(job.data, storage)
    assert prepared.manifest["records"] > 24 and storage.is_file(f"{s3_prefix}/prepared/manifest.json")

    result = run_finetune(job)
    assert result.metrics["step"] == 6 and math.isfinite(result.metrics["train/loss"])
    assert result.metrics["world_size"] == 2
    assert result.checkpoint_uri == f"{s3_prefix}/runs/on-s3/checkpoint_step0000006"
    stored = storage.list_files(f"{s3_prefix}/runs/on-s3")
    assert {"checkpoint_step0000006/strategy.json", "checkpoint_step0000006/training_state.safetensors",
            "checkpoint_step0000006/adapter_model.safetensors", "rsvlm_run.json"} <= set(stored)
    # keep_checkpoints=1: the step-3 checkpoint was deleted once step 6 was saved.
    assert not any(path.startswith("checkpoint_step0000003/") for path in stored)
