"""Images/s delivered as training batches from S3: the Ray Data pipeline against a LLaVA-style DataLoader.

    .venv/bin/python bench/ingest.py [--images 1000] [--image-size 336] [--batch-size 16]

Starts moto's S3 server on 127.0.0.1, writes ``--images`` synthetic aerial scenes (PNG, ``--image-size``
px, one instruction record each), uploads them and prepares the dataset on S3 with ``prepare_data``. Then
measures, on the same objects and with LLaVA-1.5's preprocessing (pad to square with the mean colour, CLIP
336-px processor, vicuna_v1 tokenisation with label masking):

- ``ray``: ``rsvlm.data.ingest.training_dataset`` iterated in batches, as a Ray Train worker does;
- ``baseline``: a map-style ``torch.utils.data.Dataset`` fetching each image with boto3, as LLaVA's
  ``LazySupervisedDataset`` does from a local folder, under ``DataLoader(num_workers=2)``;
- ``limit``: decode + preprocess of the same images from local disk in one process, times the core count.

Rates are per epoch, from asking for the first batch to receiving the last, averaged over the epochs after the
first; the first epoch (worker start-up included) is reported separately.
Prints one JSON line with ``ray_over_baseline`` and ``fraction_of_limit``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

# moto accepts any credentials; fake ones keep every client away from real AWS credential sources.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BUCKET = "rsvlm-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--fetch-threads", type=int, default=1, help="data.fetch_threads of the Ray pipeline")
    args = parser.parse_args()

    from rsvlm.dev.services import run_s3_server

    with tempfile.TemporaryDirectory(prefix="rsvlm-bench-ingest-") as scratch, \
            run_s3_server(Path(scratch) / "s3") as endpoint:
        figures = run(Path(scratch), endpoint, args)
    print(json.dumps(figures))


def run(scratch: Path, endpoint: str, args: argparse.Namespace) -> dict:
    import boto3

    from rsvlm.config.data import DataConfig
    from rsvlm.config.model import ModelConfig, TinyModelConfig
    from rsvlm.config.storage import StorageConfig
    from rsvlm.data.prepare import prepare_dataset
    from rsvlm.data.samples import SampleBuilder
    from rsvlm.data.storage import Storage
    from rsvlm.data.template import VICUNA_V1
    from rsvlm.model.build import load_processor

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    storage = Storage(StorageConfig(endpoint_url=endpoint))
    prefix = f"s3://{BUCKET}/bench"
    started = time.perf_counter()
    images = write_images(scratch / "raw", args.images, args.image_size)
    upload(storage, scratch / "raw", prefix)
    data = DataConfig(name="bench", source=f"{prefix}/records.jsonl", image_root=prefix, uri=f"{prefix}/prepared")
    prepared = prepare_dataset(data, storage)
    setup_s = time.perf_counter() - started
    print(f"setup: {len(images)} images of {args.image_size} px "
          f"({sum(p.stat().st_size for p in images) / len(images) / 1024:.0f} KiB each) on S3 in {setup_s:.0f} s",
          file=sys.stderr)

    # LLaVA-1.5's image side (CLIP ViT-L/14 at 336 px: 576 image tokens) on the tiny language model.
    model = ModelConfig(tiny=TinyModelConfig(image_size=336, patch_size=14))
    processor, image_tokens = load_processor(model)
    builder = SampleBuilder(processor, VICUNA_V1, image_tokens, 1024, prepared.manifest["image_root"],
                            model.image_aspect, storage, args.fetch_threads)
    cores = os.cpu_count() or 1

    server = s3_server_process(endpoint)
    limit = measure_limit(images, builder)
    cpu_before = server.cpu_times()
    baseline = measure_dataloader(prepared, builder, endpoint, args)
    cpu_between = server.cpu_times()
    ray = measure_ray(prepared, builder, args)
    cpu_after = server.cpu_times()
    server_ms = {name: 1000 * (sum(end[:2]) - sum(start[:2])) / (2 * len(images))  # two epochs each
                 for name, start, end in (("baseline", cpu_before, cpu_between), ("ray", cpu_between, cpu_after))}
    figures = {
        "images": len(images), "image_size": args.image_size, "batch_size": args.batch_size, "cores": cores,
        "limit_one_process_images_per_s": round(limit, 1), "limit_images_per_s": round(limit * cores, 1),
        "baseline_images_per_s": round(baseline["rate"], 1), "baseline_first_epoch_images_per_s": round(baseline["cold"], 1),
        "ray_images_per_s": round(ray["rate"], 1), "ray_first_epoch_images_per_s": round(ray["cold"], 1),
    }
    figures["s3_server_cpu_ms_per_image"] = {name: round(ms, 2) for name, ms in server_ms.items()}
    figures["fetch_threads"] = builder.fetch_threads
    figures["ray_over_baseline"] = round(ray["rate"] / baseline["rate"], 3)
    figures["fraction_of_limit"] = round(ray["rate"] / (limit * cores), 3)
    return figures


def s3_server_process(endpoint: str):
    """The S3 server's process (psutil), to charge the CPU it burns on the shared cores."""
    import psutil

    port = endpoint.rsplit(":", 1)[1]
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "moto.server" in cmdline and port in cmdline:
            return process
    raise RuntimeError(f"no moto server process for {endpoint}")


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` synthetic scenes and a JSONL file with one instruction record per image."""
    from rsvlm.data.synthetic import write_dataset

    write_dataset(folder, seed=0, num_train_images=count, num_test_images=0, image_size=size)
    first_per_image: dict[str, dict] = {}
    for record in json.loads((folder / "train.json").read_text()):
        first_per_image.setdefault(record["image"], record)
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first_per_image.values()))
    return [folder / image for image in first_per_image]


def upload(storage, folder: Path, prefix: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".png", ".jsonl")]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: storage.write_bytes(f"{prefix}/{p.relative_to(folder).as_posix()}", p.read_bytes()),
                      files))


def epoch_rates(make_batches: Callable[[], Iterable], count_of: Callable[[object], int], epochs: int = 2) -> dict:
    """Images/s of each epoch, from asking for the first batch to receiving the last.

    The first epoch includes starting worker processes (and, for Ray, importing torch/transformers in
    them); later epochs are what a long training run sees, shuffle barrier included.
    """
    rates, totals = [], []
    for _ in range(epochs):
        started, total = time.perf_counter(), 0
        for batch in make_batches():
            total += count_of(batch)
        rates.append(total / (time.perf_counter() - started))
        totals.append(total)
    return {"cold": rates[0], "rate": sum(rates[1:]) / len(rates[1:]), "images": totals[-1]}


def measure_limit(images: list[Path], builder) -> float:
    """Decode + pad + CLIP preprocessing in this one process, from local disk: images/s."""
    from rsvlm.data.images import open_rgb, preprocess_images

    started = time.perf_counter()
    for path in images:
        preprocess_images([open_rgb(path.read_bytes())], builder.processor.image_processor, builder.aspect)
    return len(images) / (time.perf_counter() - started)


def measure_ray(prepared, builder, args) -> dict:
    import ray

    from rsvlm.data.ingest import training_dataset

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        dataset = training_dataset(prepared.uri, prepared.manifest, builder, shuffle=True, seed=0)
        result = epoch_rates(lambda: dataset.iter_batches(batch_size=args.batch_size, batch_format="numpy",
                                                          prefetch_batches=4),
                             lambda batch: int(batch["has_image"].sum()))
    finally:
        ray.shutdown()
    assert result["images"] == prepared.manifest["records"], result
    return result


class Boto3InstructionDataset:
    """LLaVA's ``LazySupervisedDataset`` shape: records in memory, each image fetched in ``__getitem__``."""

    def __init__(self, records: list[dict], bucket: str, prefix: str, endpoint: str, builder):
        self.records, self.bucket, self.prefix, self.endpoint, self.builder = records, bucket, prefix, endpoint, builder
        self._client = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        import boto3
        import numpy as np

        from rsvlm.data.images import expand_to_square, open_rgb
        from rsvlm.data.template import tokenize_conversation

        if self._client is None:  # one client per DataLoader worker process
            self._client = boto3.client("s3", endpoint_url=self.endpoint)
        record = self.records[index]
        body = self._client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{record['image']}")["Body"].read()
        # As LLaVA's train.py: pad to square with the mean colour, then the processor, float32 out.
        processor = self.builder.processor.image_processor
        image = expand_to_square(open_rgb(body), tuple(int(round(255 * m)) for m in processor.image_mean))
        pixels = processor(images=[image], return_tensors="np")["pixel_values"][0]
        sample = tokenize_conversation(record["conversations"], self.builder.processor.tokenizer,
                                       self.builder.template, self.builder.image_token_count, self.builder.max_length)
        return {"pixel_values": pixels, "input_ids": np.asarray(sample.input_ids), "labels": np.asarray(sample.labels)}


def pad_collate(items: list[dict]) -> dict:
    import numpy as np
    import torch
    from torch.nn.utils.rnn import pad_sequence

    return {"pixel_values": torch.from_numpy(np.stack([i["pixel_values"] for i in items])),
            "input_ids": pad_sequence([torch.from_numpy(i["input_ids"]) for i in items], batch_first=True),
            "labels": pad_sequence([torch.from_numpy(i["labels"]) for i in items], batch_first=True,
                                   padding_value=-100)}


def measure_dataloader(prepared, builder, endpoint: str, args) -> dict:
    from torch.utils.data import DataLoader

    from rsvlm.data.prepare import read_prepared_records

    records = list(read_prepared_records(prepared.uri, builder.storage))
    prefix = prepared.manifest["image_root"].removeprefix(f"s3://{BUCKET}/")
    dataset = Boto3InstructionDataset(records, BUCKET, prefix, endpoint, builder)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.loader_workers,
                        collate_fn=pad_collate, prefetch_factor=4, persistent_workers=True)
    result = epoch_rates(lambda: loader, lambda batch: batch["pixel_values"].shape[0])
    assert result["images"] == len(records), result
    return result


if __name__ == "__main__":
    main()
