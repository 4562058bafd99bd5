"""Small helpers shared by test files (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

# The bucket the S3 server of the integration tests starts with.
TEST_BUCKET = "rsvlm-test"
# The secrets the session's pipeline run is given (tests/integration/conftest.py) and test_secrets.py looks
# for in everything it wrote: a password in the tracking URI, a judge key in the environment.
TRACKING_PASSWORD = "Pa55-w0rd-in-the-uri"
JUDGE_KEY = "judge-key-from-the-environment"


def checkpoint_folder(root: Path, size: int = 64) -> Path:
    """A folder shaped like a checkpoint (a file and a subfolder) to log, register and resolve."""
    folder = root / "checkpoint"
    (folder / "adapter").mkdir(parents=True)
    (folder / "config.json").write_text('{"rank": 8}')
    (folder / "adapter" / "weights.bin").write_bytes(bytes(range(256)) * size)
    return folder


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, to compare two trees byte for byte."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def conversation(record_id: str, image: str | None = "a.png", answer: str = "yes") -> dict:
    """A valid single-turn LLaVA record."""
    question = "<image>\nIs there a ship?" if image else "Is there a ship?"
    return {"id": record_id, "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def write_image_tree(root: Path) -> Path:
    """``root/img`` with good images (RGB, RGBA, 16-bit, grayscale) and every kind of bad one, plus
    ``root/outside.png`` beside it and ``img/link.png`` pointing there. Returns the image folder."""
    from PIL import Image

    folder = root / "img"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 24), (10, 20, 30)).save(folder / "a.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 128)).save(folder / "rgba.png")
    Image.new("I;16", (32, 32), 40000).save(folder / "deep.png")
    Image.new("L", (32, 32), 90).save(folder / "gray.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.png").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(folder / "tiny.png")
    Image.new("RGB", (400, 10)).save(folder / "strip.png")
    # 17000² one-bit pixels: 35 MB decoded per bit plane, 289 M pixels > the 16384² limit; a few kB as PNG.
    Image.new("1", (17000, 17000)).save(folder / "bomb.png")
    (root / "outside.png").write_bytes((folder / "a.png").read_bytes())
    (folder / "link.png").symlink_to(root / "outside.png")
    return folder


GOOD_IMAGES = ["a.png", "rgba.png", "deep.png", "gray.png"]

# (record, reason fragment) for every defect prepare_data must name; each record sits on line 2 of its file.
DEFECTS = [
    ({**conversation("x1"), "image": "missing.png"}, "image not found"),
    ({**conversation("x2"), "image": "../outside.png"}, "escapes the image root"),
    ({**conversation("x3"), "image": "/etc/passwd"}, "escapes the image root"),
    ({**conversation("x4"), "image": "link.png"}, "escapes the image root"),
    ({**conversation("x5"), "image": "corrupt.png"}, "does not decode"),
    ({**conversation("x6"), "image": "empty.png"}, "image is empty"),
    ({**conversation("x7"), "image": "tiny.png"}, "too small"),
    ({**conversation("x8"), "image": "strip.png"}, "aspect ratio"),
    ({**conversation("x9"), "image": "bomb.png"}, "decompression bomb"),
    ({"id": "x10", "image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}]}, "roles must alternate"),
    ({"id": "x11", "image": "a.png", "conversations": [{"from": "human", "value": "no image tag"},
                                                      {"from": "gpt", "value": "yes"}]}, "exactly one <image>"),
    ({"id": "x12", "image": "a.png", "conversations": [{"from": "human", "value": "<image><image>\nQ"},
                                                      {"from": "gpt", "value": "yes"}]}, "exactly one <image>"),
    ({**conversation("x13", image=None), "conversations": conversation("x")["conversations"]}, "has no image"),
    ({"id": "x14", "images": ["a.png"], "conversations": conversation("x")["conversations"]}, "'images'"),
    (conversation("a1"), "duplicate id"),
    ({"id": "x15", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                      {"from": "gpt", "value": "  "}]}, "empty 'gpt' turn"),
    ({"id": "x16", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                      {"from": "gpt", "value": 3}]}, "turn 1: expected"),
    ({"id": "x17", "image": "a.png", "conversations": "<image>\nQ"}, "'conversations' must be a non-empty list"),
    ({"id": "x18", "image": 7, "conversations": conversation("x")["conversations"]}, "'image' must be"),
    ({"image": "a.png", "conversations": conversation("x")["conversations"]}, "missing 'id'"),
    ({"id": "x19", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"}]},
     "the last turn must be the assistant's"),
]
# Symlinks exist only on a filesystem: an object store has no such defect.
LOCAL_ONLY_DEFECTS = {"x4"}


def upload_tree(storage, folder: Path, dest: str) -> None:
    """Copy every regular file under ``folder`` to ``dest`` through ``storage`` (symlinks are skipped)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            storage.write_bytes(storage.join(dest, path.relative_to(folder).as_posix()), path.read_bytes())


def llava_batch(loaded, seed: int = 0) -> dict:
    """One image-text sample with an answer for a loaded model (``LoadedModel``), through the real template code."""
    import torch

    from rsvlm.data.template import VICUNA_V1, tokenize_conversation

    turns = [{"from": "human", "value": "<image>\nIs there a ship in the image?"}, {"from": "gpt", "value": "yes"}]
    sample = tokenize_conversation(turns, loaded.tokenizer, VICUNA_V1, loaded.image_token_count, 256)
    generator = torch.Generator().manual_seed(seed)
    size = loaded.model.config.vision_config.image_size
    return {"input_ids": torch.tensor([sample.input_ids]), "labels": torch.tensor([sample.labels]),
            "attention_mask": torch.ones(1, len(sample.input_ids), dtype=torch.long),
            "pixel_values": torch.randn(1, 3, size, size, generator=generator)}


def set_alias(tracking_uri: str, name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` of registered model ``name`` at ``version`` (what a user does in the MLflow UI)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(name, alias,
                                                                                                 str(version))


def get_alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
                   .get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
