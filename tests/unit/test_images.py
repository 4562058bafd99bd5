"""Decoding, padding and the uint8 → normalised pixel path against the model's own image processor."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rsvlm.config.model import ImageAspect, ModelConfig, TinyModelConfig
from rsvlm.data.images import (expand_to_square, image_problem, normalize_pixels, open_rgb, preprocess_images,
                               resize_images)
from rsvlm.data.samples import collate
from rsvlm.model.build import load_model


@pytest.fixture(scope="module")
def image_processor():
    return load_model(ModelConfig(tiny=TinyModelConfig(image_size=64, patch_size=16))).processor.image_processor


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode,value", [("RGBA", (10, 20, 30, 128)), ("L", 90), ("P", 3), ("I;16", 40000)])
def test_every_mode_decodes_to_rgb(mode, value):
    image = open_rgb(png(Image.new(mode, (16, 12), value)))
    assert image.mode == "RGB" and image.size == (16, 12)


def test_sixteen_bit_intensities_are_scaled_not_clipped():
    source = Image.new("I;16", (2, 2))
    for xy, value in {(0, 0): 0, (1, 0): 1000, (0, 1): 2000, (1, 1): 4000}.items():
        source.putpixel(xy, value)
    image = open_rgb(png(source))
    assert np.asarray(image)[:, :, 0].tolist() == [[0, 64], [128, 255]]


def test_image_problems_are_named():
    assert image_problem(png(Image.new("RGB", (32, 32)))) is None
    assert "does not decode" in image_problem(b"\x89PNG truncated")
    assert "too small" in image_problem(png(Image.new("RGB", (4, 40))))
    assert "aspect ratio" in image_problem(png(Image.new("RGB", (420, 20))))
    assert "decompression bomb" in image_problem(png(Image.new("1", (17000, 17000))))


def test_padding_uses_the_mean_colour_and_keeps_the_image_centred():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand_to_square(image, (1, 2, 3))
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((20, 20)) == (255, 0, 0)
    assert square.getpixel((20, 9)) == (1, 2, 3) and square.getpixel((20, 10)) == (255, 0, 0)


def test_uint8_path_equals_the_image_processor(image_processor):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((50, 80), (64, 64))]
    uint8 = resize_images(images, image_processor, ImageAspect.pad)
    assert uint8.dtype == np.uint8 and uint8.shape == (2, 3, 64, 64)
    fill = tuple(int(round(255 * m)) for m in image_processor.image_mean)
    reference = image_processor(images=[expand_to_square(i, fill) for i in images], return_tensors="np")
    np.testing.assert_allclose(preprocess_images(images, image_processor, ImageAspect.pad),
                               reference["pixel_values"], atol=1e-5)
    np.testing.assert_allclose(normalize_pixels(torch.from_numpy(uint8), image_processor).numpy(),
                               reference["pixel_values"], atol=1e-5)


def test_collate_trims_drops_fully_masked_rows_and_normalises(image_processor):
    batch = {
        "input_ids": np.array([[5, 6, 7, 0], [8, 9, 0, 0], [1, 0, 0, 0]], dtype=np.int32),
        "labels": np.array([[-100, 6, 7, -100], [-100, -100, -100, -100], [-100, 1, -100, -100]], dtype=np.int32),
        "length": np.array([3, 2, 1], dtype=np.int32),
        "pixel_values": np.full((3, 3, 64, 64), 255, dtype=np.uint8),
        "has_image": np.array([True, True, False]),
        "fully_masked": np.array([False, True, False]),
    }
    inputs, dropped = collate(batch, image_processor)
    assert dropped == 1
    assert inputs["input_ids"].tolist() == [[5, 6, 7], [1, 0, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert inputs["pixel_values"].shape == (1, 3, 64, 64) and inputs["pixel_values"].dtype == torch.float32
    white = (1.0 - np.asarray(image_processor.image_mean)) / np.asarray(image_processor.image_std)
    np.testing.assert_allclose(inputs["pixel_values"][0, :, 0, 0].numpy(), white, rtol=1e-6)
