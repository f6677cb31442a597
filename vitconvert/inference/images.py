"""Finding, opening and decoding images to RGB, with one clear error per bad file.

Pillow and numpy only (no torch), so `vitpredict` can check every input before it loads a model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import VitConvertError

# Formats we decode; naming them keeps Pillow from trying every plugin it has (EPS, for one,
# would run Ghostscript). The JPEG opener also reads the multi-picture JPEGs (MPO) cameras write.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"})
# Pillow's default limit: more pixels than this is more likely a decompression bomb than a photo.
MAX_PIXELS = 89_478_485
WHITE = (255, 255, 255, 255)


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; each directory replaced by the image files directly inside it, sorted by name."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir()
                            if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file())
            if not inside:
                raise VitConvertError(
                    f"{path}: directory has no image files ({', '.join(sorted(SUFFIXES))})")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise VitConvertError(f"{path}: not a regular file")
        else:
            raise VitConvertError(f"{path}: no such file")
    return found


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image with only its header read: format and pixel count checked, pixels not decoded yet."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise VitConvertError(f"{path}: empty file (0 bytes), not an image")
        with warnings.catch_warnings():
            # Our own limit below says it more clearly than Pillow's warning would.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=FORMATS)
    except FileNotFoundError:
        raise VitConvertError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise VitConvertError(
            f"{path}: not an image file vitpredict can read (JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    except Image.DecompressionBombError as e:
        raise VitConvertError(f"{path}: image too large, refused as a possible decompression bomb ({e})") from None
    except OSError as e:
        raise VitConvertError(f"{path}: cannot read ({e.strerror or e})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise VitConvertError(
            f"{path}: image too large ({width}x{height} = {width * height:,} pixels, limit {max_pixels:,}); "
            "refused as a possible decompression bomb")
    return image


def load_rgb(source: str | os.PathLike | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The first frame, decoded, turned upright by its EXIF orientation, as 8-bit RGB."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    image = open_image(source, max_pixels)
    try:
        image.load()
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow reports broken data all these ways
        raise VitConvertError(f"{source}: cannot decode image ({e})") from None
    except VitConvertError as e:
        raise VitConvertError(f"{source}: {e}") from None
    finally:
        image.close()


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image: upright, transparency composited over white, 16-bit scaled to 8-bit."""
    image = ImageOps.exif_transpose(image)  # always a new image, so the caller may close the original
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit samples (PNG, TIFF): 0..65535 onto 0..255. Pillow's own conversion clips instead.
        levels = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.rint(levels).astype(np.uint8)).convert("RGB")
    if mode == "La":  # premultiplied; Pillow converts it to RGBA only through LA
        image = image.convert("LA")
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        # Transparent pixels have arbitrary colour underneath; white is what a viewer shows.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, F, ...
    except ValueError as e:
        raise VitConvertError(f"cannot convert image mode {mode} to RGB ({e})") from None
