"""process_images in each aspect-ratio mode, and bad images that name themselves."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from mvlm.data.images import (
    ImageError,
    anyres_views,
    expand2square,
    load_image,
    mean_color,
    process_images,
    select_best_resolution,
)

SIZE = 28


@pytest.fixture
def processor():
    return CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})


def solid(width, height, color=(200, 10, 10), mode="RGB"):
    return Image.new(mode, (width, height), color)


def test_square_uses_the_processor_resize_and_crop(processor):
    wide = solid(56, 28)
    pixels = process_images([wide, wide], processor, "square")
    assert pixels.shape == (2, 3, SIZE, SIZE)
    assert torch.allclose(pixels, processor(images=[wide, wide], return_tensors="pt")["pixel_values"])


def test_pad_fills_with_the_mean_colour_so_padding_normalises_to_zero(processor):
    wide = solid(56, 28, color=(255, 255, 255))
    pixels = process_images([wide], processor, "pad")
    assert pixels.shape == (1, 3, SIZE, SIZE)
    # 56x28 padded to 56x56: the top and bottom quarters are padding, which normalises to ~0 in every channel
    # (within one grey level: the colour is the mean truncated to integers, as LLaVA's expand2square takes it).
    assert pixels[0, :, :3].abs().max() < 0.02 and pixels[0, :, -3:].abs().max() < 0.02
    assert mean_color(processor) == tuple(int(channel * 255) for channel in processor.image_mean)
    assert pixels[0, :, 10:18].min() > 1.0  # the white image itself
    square = expand2square(wide, mean_color(processor))
    assert square.size == (56, 56) and square.getpixel((0, 0)) == mean_color(processor)
    assert square.getpixel((28, 28)) == (255, 255, 255)


def test_anyres_picks_the_grid_and_puts_the_global_view_first(processor):
    wide = solid(112, 50)
    assert select_best_resolution(wide.size, [(56, 28), (28, 56), (56, 56)]) == (56, 28)
    views = anyres_views(wide, SIZE, [(56, 28), (28, 56), (56, 56)])
    assert len(views) == 3 and all(view.size == (SIZE, SIZE) for view in views)
    pixels = process_images([wide, wide], processor, "anyres", image_grid_pinpoints="[(56, 28), (28, 56), (56, 56)]")
    assert pixels.shape == (2, 3, 3, SIZE, SIZE)
    grid = [(56, 28), (84, 28)]
    mixed = process_images([solid(60, 30), solid(168, 56)], processor, "anyres", image_grid_pinpoints=grid)
    assert isinstance(mixed, list) and [views.shape[0] for views in mixed] == [3, 4]
    default_grid = process_images([solid(300, 300)], processor, "anyres")
    assert default_grid.shape == (1, 5, 3, SIZE, SIZE)  # 2x2 grid + global view


def test_images_are_converted_to_rgb(processor, tmp_path):
    gray = solid(30, 30, color=128, mode="L")
    rgba = solid(30, 30, color=(1, 2, 3, 0), mode="RGBA")
    assert load_image(gray).mode == "RGB" and load_image(rgba).mode == "RGB"
    path = tmp_path / "gray.png"
    gray.save(path)
    assert process_images([str(path)], processor, "pad").shape == (1, 3, SIZE, SIZE)


def test_unknown_aspect_ratio_is_refused(processor):
    with pytest.raises(ValueError, match="image_aspect_ratio must be one of"):
        process_images([solid(4, 4)], processor, "stretch")


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(ImageError, match=r"image file .*nope\.jpg does not exist"):
        load_image(str(tmp_path / "nope.jpg"))


def test_corrupt_image_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    buffer = io.BytesIO()
    solid(64, 64).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[:200])  # truncated
    with pytest.raises(ImageError, match=r"cannot read image .*broken\.jpg"):
        load_image(str(path))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ImageError, match=r"cannot read image .*notes\.png"):
        load_image(str(not_an_image))


def test_oversized_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ImageError, match=r"bomb\.png is 400x300 = 120000 pixels, over the limit of 100000"):
        load_image(str(path), max_pixels=100_000)
    assert load_image(str(path)).size == (400, 300)


def test_image_bytes_load(tmp_path):
    buffer = io.BytesIO()
    solid(10, 12).save(buffer, format="PNG")
    assert load_image(buffer.getvalue()).size == (10, 12)
