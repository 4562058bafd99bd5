"""The Ray Data training pipeline: every record once per epoch, a new deterministic order each epoch."""

from __future__ import annotations

import pytest

from rsvlm.data.ingest import training_dataset
from rsvlm.data.prepare import prepare_dataset, read_prepared_records
from rsvlm.data.samples import SampleBuilder
from rsvlm.data.template import VICUNA_V1
from rsvlm.errors import as_job_error
from rsvlm.model.build import load_processor


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from rsvlm.config import compose

    workdir = tmp_path_factory.mktemp("ingest")
    job = compose([f"workdir={workdir}", "data.synthetic.num_train_images=12", "data.synthetic.num_test_images=1"])
    dataset = prepare_dataset(job.data)
    processor, image_tokens = load_processor(job.model)
    builder = SampleBuilder(processor, VICUNA_V1, image_tokens, job.data.max_length, dataset.manifest["image_root"])
    return dataset, builder


def epoch_ids(dataset) -> list[str]:
    return [i for batch in dataset.iter_batches(batch_size=8, batch_format="numpy") for i in batch["id"]]


def test_each_epoch_has_every_record_in_a_new_reproducible_order(prepared, local_ray):
    dataset, builder = prepared
    ids = [r["id"] for r in read_prepared_records(dataset.uri)]
    first = training_dataset(dataset.uri, dataset.manifest, builder, shuffle=True, seed=7)
    epochs = [epoch_ids(first) for _ in range(2)]
    assert all(sorted(epoch) == sorted(ids) for epoch in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != ids
    again = training_dataset(dataset.uri, dataset.manifest, builder, shuffle=True, seed=7)
    assert [epoch_ids(again) for _ in range(2)] == epochs
    other_seed = training_dataset(dataset.uri, dataset.manifest, builder, shuffle=True, seed=8)
    assert epoch_ids(other_seed) != epochs[0]
    in_order = training_dataset(dataset.uri, dataset.manifest, builder, shuffle=False, seed=7)
    assert epoch_ids(in_order) == ids


def test_rows_carry_uint8_pixels_and_masked_labels(prepared, local_ray):
    dataset, builder = prepared
    batch = next(iter(training_dataset(dataset.uri, dataset.manifest, builder, shuffle=False, seed=0)
                      .iter_batches(batch_size=4, batch_format="numpy")))
    assert batch["pixel_values"].dtype.name == "uint8" and batch["pixel_values"].shape[1:] == (3, 64, 64)
    assert batch["has_image"].all() and not batch["fully_masked"].any()
    for ids, labels, length in zip(batch["input_ids"], batch["labels"], batch["length"]):
        supervised = labels[:length] != -100
        assert 0 < supervised.sum() < length  # the prompt is masked, the answer is not
        assert (labels[:length][supervised] == ids[:length][supervised]).all()


@pytest.mark.parametrize("val_fraction", [0.0, 0.3])
def test_a_bad_line_in_a_shard_is_named_by_file_and_line(prepared, local_ray, tmp_path, val_fraction):
    """A change the driver's size check cannot see (same length) is reported as <shard>:<line>, whether the
    validation split (which reads each line's id) or the sample builder meets it first."""
    import shutil
    from pathlib import Path

    dataset, builder = prepared
    copy = tmp_path / "prepared"
    shutil.copytree(dataset.uri, copy)
    shard = copy / dataset.manifest["shards"][0]
    lines = shard.read_text().split("\n")
    middle = len(lines) // 2
    lines[middle] = "{" + "x" * (len(lines[middle].encode()) - 1)
    shard.write_text("\n".join(lines))
    assert shard.stat().st_size == (Path(dataset.uri) / shard.name).stat().st_size
    rows = training_dataset(str(copy), dataset.manifest, builder, shuffle=True, seed=0, val_fraction=val_fraction)
    with pytest.raises(Exception) as caught:
        for _ in rows.iter_batches(batch_size=8):
            pass
    error = str(as_job_error(caught.value))
    assert error.startswith(f"{shard}:{middle + 1}: invalid JSON ("), str(error)
    assert "run jobs/prepare_data.py again" in error
