"""Image decoding and LLaVA-1.5 preprocessing (pad to square with the mean colour, then the model's processor)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

from rsvlm.config.model import ImageAspect

# Refuse images that would decode to more pixels than this (decompression bombs); 16k × 16k. The check is
# ours (open_rgb), so PIL's own — a warning up to twice its limit, through the process-wide, thread-unsafe
# warnings filter — is switched off.
MAX_PIXELS = 16384 * 16384
Image.MAX_IMAGE_PIXELS = None
# Sanity limits for instruction images: smaller than this is an icon or a broken crop, and a more extreme
# aspect ratio is a strip that padding to a square would turn into mostly fill colour.
MIN_SIDE = 8
MAX_ASPECT_RATIO = 20.0


def open_rgb(source: Union[str, Path, bytes]) -> Image.Image:
    """Decode an image file or bytes to RGB (RGBA, 16-bit, palette and grayscale images are converted).

    Raises ``Image.DecompressionBombError`` before decoding an image of more than :data:`MAX_PIXELS`.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with stream:
        image = Image.open(stream)  # reads the header only
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise Image.DecompressionBombError(f"{width}x{height} = {width * height} pixels, limit {MAX_PIXELS}")
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # Scale 16/32-bit intensities to 8 bits instead of clipping them white.
            array = np.asarray(image, dtype=np.float64)
            peak = array.max() or 1.0
            image = Image.fromarray(np.rint(array * (255.0 / peak)).astype(np.uint8))
        return image.convert("RGB")


def image_problem(source: Union[str, Path, bytes]) -> str | None:
    """Why an image file cannot be trained on (corrupt, a decompression bomb, absurd size), or None."""
    try:
        image = open_rgb(source)
    except Image.DecompressionBombError as exc:
        return f"decompression bomb refused ({exc})"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt files
        return f"does not decode ({type(exc).__name__}: {exc})"
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        return f"too small ({width}x{height}; at least {MIN_SIDE} px a side)"
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return f"aspect ratio {width}x{height} exceeds {MAX_ASPECT_RATIO:g}:1"
    return None


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's ``pad``: centre the image on a square canvas of ``fill`` colour, keeping its aspect."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def resize_images(images: Sequence[Image.Image], image_processor, aspect: ImageAspect) -> np.ndarray:
    """The geometric half of preprocessing: pad (``aspect=pad``), resize and crop. ``[N, 3, H, W]`` uint8.

    Training ships these uint8 pixels from the data workers (a quarter of float32's bytes through Ray's
    object store) and :func:`normalize_pixels` finishes the job where the batch is assembled.
    """
    if aspect is ImageAspect.pad:
        fill = tuple(int(round(255 * m)) for m in image_processor.image_mean)
        images = [expand_to_square(image, fill) for image in images]
    pixels = image_processor(images=list(images), do_rescale=False, do_normalize=False,
                             return_tensors="np")["pixel_values"]
    if pixels.dtype == np.uint8:  # PIL-based processors resize in uint8 already
        return pixels
    return np.clip(np.rint(pixels, dtype=np.float32), 0, 255).astype(np.uint8)


def normalize_pixels(pixels, image_processor):
    """uint8 ``[N, 3, H, W]`` (numpy or torch) → the processor's rescaled, normalised float32 values."""
    scale = float(getattr(image_processor, "rescale_factor", 1 / 255))
    mean = np.asarray(image_processor.image_mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(image_processor.image_std, dtype=np.float32).reshape(1, 3, 1, 1)
    if isinstance(pixels, np.ndarray):
        return (pixels.astype(np.float32) * scale - mean) / std
    import torch

    return (pixels.float() * scale - torch.from_numpy(mean).to(pixels.device)) / torch.from_numpy(std).to(pixels.device)


def preprocess_images(images: Sequence[Image.Image], image_processor, aspect: ImageAspect) -> np.ndarray:
    """Pixel values ``[N, 3, H, W]`` float32 for the vision tower (what the processor alone would give)."""
    return normalize_pixels(resize_images(images, image_processor, aspect), image_processor)
