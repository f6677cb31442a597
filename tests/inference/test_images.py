"""Every image becomes upright 8-bit RGB the way a person would expect, or a clear error naming it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.images import png_header
from PIL import Image

from vitconvert.core.errors import VitConvertError
from vitconvert.inference.images import MAX_PIXELS, find_images, load_rgb, open_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_rgb_jpeg_is_what_pillow_decodes(cat_jpg):
    got = load_rgb(cat_jpg)
    assert got.size == (451, 300)
    assert np.array_equal(pixels(got), np.asarray(Image.open(cat_jpg).convert("RGB")))


def test_grayscale_becomes_three_equal_channels(gray_png):
    gray = np.asarray(Image.open(gray_png))
    rgb = pixels(load_rgb(gray_png))
    assert all(np.array_equal(rgb[..., c], gray) for c in range(3))


@pytest.mark.parametrize("suffix", [".png", ".webp", ".bmp", ".tiff", ".gif"])
def test_lossless_formats_keep_the_pixels(tmp_path, suffix):
    image = Image.new("RGB", (6, 4), RED)
    image.paste(BLUE, (3, 0, 6, 4))
    path = tmp_path / f"im{suffix}"
    image.save(path, lossless=True) if suffix == ".webp" else image.save(path)
    got = pixels(load_rgb(path))
    assert tuple(got[0, 0]) == RED and tuple(got[0, 5]) == BLUE


def test_palette_and_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 2
    assert np.all(pixels(load_rgb(path)) == RED)


def test_palette_transparency_is_white(tmp_path):
    image = Image.new("P", (4, 1))
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.putdata([0, 1, 0, 1])
    path = tmp_path / "p.png"
    image.save(path, transparency=1)  # palette index 1 (blue) is transparent
    assert Image.open(path).mode == "P"
    assert [tuple(p) for p in pixels(load_rgb(path))[0]] == [RED, WHITE, RED, WHITE]


@pytest.mark.parametrize("mode, opaque, half", [
    ("RGBA", (*GREEN, 255), (*GREEN, 128)),
    ("LA", (100, 255), (100, 128)),
])
def test_alpha_is_composited_over_white(tmp_path, mode, opaque, half):
    image = Image.new(mode, (3, 1))
    image.putdata([opaque, half, (*opaque[:-1], 0)])
    path = tmp_path / f"{mode}.png"
    image.save(path)
    row = pixels(load_rgb(path))[0]
    color = np.array(GREEN if mode == "RGBA" else (100, 100, 100))
    assert np.array_equal(row[0], color)
    # 128/255 of the colour over white, to the nearest level.
    assert np.abs(row[1] - (color * 128 + 255 * 127) / 255).max() <= 1
    assert tuple(row[2]) == WHITE


def test_cmyk(tmp_path):
    # CMYK (0, 255, 255, 0) is red; TIFF keeps it exact, JPEG within its loss.
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.tiff")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert np.all(pixels(load_rgb(tmp_path / "c.tiff")) == RED)
    assert np.abs(pixels(load_rgb(tmp_path / "c.jpg")) - RED).max() <= 3


@pytest.mark.parametrize("suffix, dtype", [(".png", np.uint16), (".tiff", np.int32)])
def test_16_bit_is_scaled_not_clipped(tmp_path, suffix, dtype):
    # Pillow's own convert would clip everything above 255 to white.
    levels = np.array([[0, 257 * 100, 65535, 32768]], dtype=dtype)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    assert list(pixels(load_rgb(path))[0, :, 0]) == [0, 100, 255, 128]


def test_bilevel(tmp_path):
    image = Image.new("1", (2, 1))
    image.putdata([0, 255])
    image.save(tmp_path / "b.bmp")
    assert [tuple(p) for p in pixels(load_rgb(tmp_path / "b.bmp"))[0]] == [(0, 0, 0), WHITE]


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide, 20 high, red left, blue right; orientation 6 means "rotate 90 degrees
    # clockwise to display", so the viewer sees 20 wide, 40 high, red on top.
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    got = load_rgb(tmp_path / "rotated.jpg")
    assert got.size == (20, 40)
    rgb = pixels(got)
    assert np.abs(rgb[5, 10] - RED).max() < 10 and np.abs(rgb[35, 10] - BLUE).max() < 10


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), GREEN).save(tmp_path / "dot.png")
    assert load_rgb(tmp_path / "dot.png").size == (1, 1)


def test_pil_images_are_accepted_directly():
    assert load_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == WHITE


# --- bad files: one clear error that names the file ---------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"just some text, not pixels\n" * 10), "not an image file"),
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes((Path(__file__).parents[1] / "data" / "cat.jpg").read_bytes()[:5000]),
     "cannot decode image"),
])
def test_bad_files_name_the_file(tmp_path, make, message):
    path = tmp_path / "photo.jpg"
    make(path)
    with pytest.raises(VitConvertError) as e:
        load_rgb(path)
    assert str(path) in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("side", [10_000, 20_000])  # 1.1x and 4.5x Pillow's limit of 89,478,485
def test_decompression_bomb_is_refused(tmp_path, side):
    path = png_header(tmp_path / "bomb.png", side, side)
    with pytest.raises(VitConvertError, match="decompression bomb") as e:
        open_image(path)
    assert str(path) in str(e.value)
    assert side * side > MAX_PIXELS


def test_pixel_limit_can_be_lowered(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    assert load_rgb(tmp_path / "a.png", max_pixels=10_000).size == (100, 100)
    with pytest.raises(VitConvertError, match=r"100x100 = 10,000 pixels, limit 9,999"):
        load_rgb(tmp_path / "a.png", max_pixels=9_999)


def test_other_formats_are_not_tried(tmp_path):
    # An EPS file would make Pillow run Ghostscript; we only open the formats we name.
    path = tmp_path / "x.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(VitConvertError, match="not an image file"):
        open_image(path)


# --- finding images ---------------------------------------------------------------------------

def image_tree(root):
    """root: three images, a text file, a hidden image; sub/ with an image and sub/deeper/ with one;
    a hidden .cache/ with an image."""
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.png", "sub/d.png", "sub/deeper/e.gif",
                 ".cache/f.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def test_directories_expand_to_their_images_sorted(tmp_path):
    root = image_tree(tmp_path)
    single = root / "sub" / "d.png"
    found = find_images([single, root])
    assert found.paths == [single, root / "a.JPG", root / "b.png", root / "c.webp"]
    # sub/ and notes.txt; names starting with '.' are passed over without a word, as `ls` does
    assert (found.skipped_folders, found.skipped_files) == (1, (root / "notes.txt",))
    assert found.skipped() == f"1 sub-folder and 1 non-image file ({root / 'notes.txt'})"


def test_recursive_search_goes_down_every_sub_folder(tmp_path):
    root = image_tree(tmp_path)
    (root / "sub" / "deeper" / "loop").symlink_to(root, target_is_directory=True)  # searched once, not forever
    found = find_images([root], recursive=True)
    assert found.paths == [root / n for n in ("a.JPG", "b.png", "c.webp", "sub/d.png", "sub/deeper/e.gif")]
    assert (found.skipped_folders, found.skipped_files) == (0, (root / "notes.txt",))
    assert found.skipped() == f"1 non-image file ({root / 'notes.txt'})"


def test_the_skipped_files_are_named_up_to_three_then_counted(tmp_path):
    for name in ["a.png", "d.txt", "c.md", "b.csv", "e.json"]:
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path])
    assert found.skipped() == (f"4 non-image files ({tmp_path / 'b.csv'}, {tmp_path / 'c.md'}, {tmp_path / 'd.txt'} "
                               "and 1 more)")


def test_files_are_passed_as_given_for_open_image_to_judge(tmp_path):
    missing, text = tmp_path / "nope.jpg", tmp_path / "notes.txt"
    text.write_text("hello")
    assert find_images([missing, text]).paths == [missing, text]
    with pytest.raises(VitConvertError, match=r"nope\.jpg: no such file"):
        open_image(missing)


def test_a_directory_without_images_is_an_error(tmp_path):
    with pytest.raises(VitConvertError, match="directory has no image files"):
        find_images([tmp_path])
    (tmp_path / "2023" / "jan").mkdir(parents=True)
    (tmp_path / "2023" / "jan" / "x.jpg").write_bytes(b"x")
    (tmp_path / "2024").mkdir()
    with pytest.raises(VitConvertError, match=r"directory has no image files .*; 2 sub-folders not searched "
                                              r"\(--recursive / recursive=True\)"):
        find_images([tmp_path])
    assert find_images([tmp_path], recursive=True).paths == [tmp_path / "2023" / "jan" / "x.jpg"]


def test_a_fifo_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(VitConvertError, match=r"pipe\.jpg: not a regular file"):
        open_image(fifo)  # reading it would block
