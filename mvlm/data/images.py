"""Images -> pixel values, with LLaVA's aspect-ratio modes, and errors that name the file.

`square`: the processor's own resize/crop. `pad`: pad to a square with the processor's mean colour
first (LLaVA-1.5's expand2square), so nothing is cropped away. `anyres`: LLaVA-NeXT tiling — the
image is fitted into the best grid from `image_grid_pinpoints`, cut into tower-sized tiles, and a
resized global view is put first; each tile then counts as one image for the tower.
"""

from __future__ import annotations

import ast
import io
import os
import warnings
from typing import Any, Sequence

import torch
from PIL import Image

from mvlm.errors import DataError, FlagError

ASPECT_RATIOS = ("square", "pad", "anyres")
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold (about 9459 x 9459 pixels); larger images are refused."""


class ImageError(DataError):
    """An image that cannot be used: missing, unreadable, or too large; the message names it.

    `reason` is one of mvlm.data.validate.REASONS' codes (missing_image, corrupt_image, oversized_image, ...).
    """

    def __init__(self, message: str, reason: str = "corrupt_image"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep the reason when the error crosses a process boundary
        return type(self), (str(self), self.reason)


def load_image(source: str | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a path, raw bytes or PIL image as RGB, refusing files that are missing, corrupt or oversized."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    name = "<image bytes>" if isinstance(source, bytes) else str(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise ImageError(f"image file {name} does not exist", "missing_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image {name} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                    "(a decompression bomb or a mistake); resize it or raise the limit",
                    "oversized_image",
                )
            image.load()
            return image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageError(f"image {name} is refused as a decompression bomb: {error}", "oversized_image") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read image {name}: {error}", "corrupt_image") from error


def mean_color(image_processor: Any) -> tuple[int, int, int]:
    """The processor's normalisation mean as an RGB colour (padding with it gives about zero after normalising).

    Truncated, not rounded, as LLaVA's, XTuner's and transformers' LLaVA processors do, so the padded pixels
    are theirs exactly."""
    return tuple(int(channel * 255) for channel in image_processor.image_mean)


def expand2square(image: Image.Image, background_color: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side equally on both ends so the image becomes square (LLaVA's expand2square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background_color)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def processor_input_size(image_processor: Any) -> tuple[int, int]:
    """(height, width) of the pixel values the processor produces."""
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None and crop.get("height"):
        return crop["height"], crop["width"]
    size = image_processor.size
    if size.get("height"):
        return size["height"], size["width"]
    return size["shortest_edge"], size["shortest_edge"]


def parse_grid_pinpoints(pinpoints: str | Sequence[Sequence[int]] | None, tile_size: int) -> list[tuple[int, int]]:
    """Candidate (width, height) resolutions; LLaVA-NeXT's default grid when none are given."""
    if pinpoints is None:
        grids = [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]
        return [(columns * tile_size, rows * tile_size) for columns, rows in grids]
    if isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    return [(int(width), int(height)) for width, height in pinpoints]


def select_best_resolution(image_size: tuple[int, int], candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The candidate that keeps the most of the image's resolution, then wastes the fewest pixels."""
    width, height = image_size

    def score(candidate: tuple[int, int]) -> tuple[int, int]:
        scale = min(candidate[0] / width, candidate[1] / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = candidate[0] * candidate[1] - effective
        return effective, -wasted

    return max(candidates, key=score)


def resize_and_pad(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Fit the image inside `target` (width, height) keeping its aspect ratio, centred on black."""
    target_width, target_height = target
    scale = min(target_width / image.width, target_height / image.height)
    new_size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    canvas = Image.new("RGB", target, (0, 0, 0))
    canvas.paste(image.resize(new_size), ((target_width - new_size[0]) // 2, (target_height - new_size[1]) // 2))
    return canvas


def anyres_views(image: Image.Image, tile_size: int, pinpoints: str | Sequence[Sequence[int]] | None) -> list[Image.Image]:
    """The global view followed by the tiles of the best grid, each `tile_size` square."""
    best = select_best_resolution(image.size, parse_grid_pinpoints(pinpoints, tile_size))
    canvas = resize_and_pad(image, best)
    tiles = [
        canvas.crop((left, top, left + tile_size, top + tile_size))
        for top in range(0, best[1], tile_size)
        for left in range(0, best[0], tile_size)
    ]
    return [image.resize((tile_size, tile_size))] + tiles


def anyres_view_count(
    image_size: tuple[int, int], tile_size: int, pinpoints: str | Sequence[Sequence[int]] | None
) -> int:
    """How many views `anyres_views` makes of an image of `image_size` (width, height), without making them:
    lets a dataset check count an image's tokens from its size alone."""
    best = select_best_resolution(image_size, parse_grid_pinpoints(pinpoints, tile_size))
    return 1 + len(range(0, best[0], tile_size)) * len(range(0, best[1], tile_size))


def process_images(
    images: Sequence[Image.Image],
    image_processor: Any,
    image_aspect_ratio: str = "pad",
    image_grid_pinpoints: str | Sequence[Sequence[int]] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Pixel values for the tower: (images, 3, H, W); for `anyres`, one (views, 3, H, W) tensor per image,
    stacked when every image has the same number of views (as LLaVA returns them)."""
    if image_aspect_ratio not in ASPECT_RATIOS:
        raise FlagError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {image_aspect_ratio!r}")
    images = [load_image(image) for image in images]

    def pixels(views: list[Image.Image]) -> torch.Tensor:
        return image_processor(images=views, return_tensors="pt")["pixel_values"]

    if image_aspect_ratio == "square":
        return pixels(images)
    if image_aspect_ratio == "pad":
        return pixels([expand2square(image, mean_color(image_processor)) for image in images])
    tile_size = min(processor_input_size(image_processor))
    per_image = [pixels(anyres_views(image, tile_size, image_grid_pinpoints)) for image in images]
    if all(views.shape == per_image[0].shape for views in per_image):
        return torch.stack(per_image)
    return per_image
