"""Finding, opening and decoding images to RGB, with one clear error per bad file.

Pillow and numpy only (no torch), so `vitpredict` can check every input before it loads a model.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


@dataclass(frozen=True)
class FoundImages:
    """What `find_images` found, and what it left out of the directories it searched."""

    paths: list[Path]  # in input order; a directory's images sorted by path
    skipped_folders: int = 0  # sub-folders not searched (recursive=False)
    skipped_files: tuple[Path, ...] = ()  # files whose suffix is not an image format's, sorted

    def skipped(self) -> str:
        """What was left out, in words ('2 sub-folders and 1 non-image file (notes.txt)'), naming the first
        few files; '' for nothing."""
        files = _count(len(self.skipped_files), "non-image file")
        if self.skipped_files:
            names = [str(p) for p in self.skipped_files[:SKIPPED_NAMED]]
            more = len(self.skipped_files) - len(names)
            files += f" ({', '.join(names)}{f' and {more} more' if more else ''})"
        return " and ".join(text for n, text in ((self.skipped_folders, _count(self.skipped_folders, "sub-folder")),
                                                 (len(self.skipped_files), files)) if n)


SKIPPED_NAMED = 3  # a note names this many skipped files, then counts the rest


def find_images(inputs: Iterable[str | os.PathLike], recursive: bool = False) -> FoundImages:
    """Files as given (whether they are readable images is `open_image`'s to say, one by one); each
    directory replaced by the image files inside it, and inside its sub-folders if `recursive`.
    Names starting with '.' are passed over, as `ls` and shell globs do. A directory without
    images is an error: it is a mistake in the arguments, not a bad image."""
    paths: list[Path] = []
    skipped_folders, skipped_files = 0, []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            paths.append(path)
            continue
        found, folders, files = _search(path, recursive)
        if not found:
            hint = f"; {_count(folders, 'sub-folder')} not searched (--recursive / recursive=True)" if folders else ""
            raise VitConvertError(
                f"{path}: directory has no image files ({', '.join(sorted(SUFFIXES))}){hint}")
        paths += found
        skipped_folders += folders
        skipped_files += files
    return FoundImages(paths, skipped_folders, tuple(sorted(skipped_files)))


def _search(top: Path, recursive: bool) -> tuple[list[Path], int, list[Path]]:
    """(images under `top` sorted by path, sub-folders skipped, other files skipped)."""
    images: list[Path] = []
    skipped_folders, skipped_files = 0, []
    pending, seen = [top], {top.resolve()}  # seen: a linked folder that leads back is searched once
    while pending:
        folder = pending.pop()
        try:
            entries = list(folder.iterdir())
        except OSError as e:
            raise VitConvertError(f"{folder}: cannot read directory ({e.strerror or e})") from None
        for p in entries:
            if p.name.startswith("."):
                continue
            if p.is_dir():
                if not recursive:
                    skipped_folders += 1
                elif p.resolve() not in seen:
                    seen.add(p.resolve())
                    pending.append(p)
            elif p.suffix.lower() in SUFFIXES and p.is_file():
                images.append(p)
            else:
                skipped_files.append(p)
    return sorted(images), skipped_folders, skipped_files


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image with only its header read: format and pixel count checked, pixels not decoded yet."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a directory fails late and a FIFO would block the read
            raise VitConvertError(f"{path}: not a regular file, not an image")
        if info.st_size == 0:
            raise VitConvertError(f"{path}: empty file (0 bytes), not an image")
        return _open(path, str(path), max_pixels)
    except FileNotFoundError:
        raise VitConvertError(f"{path}: no such file") from None
    except OSError as e:
        raise VitConvertError(f"{path}: cannot read ({e.strerror or e})") from None


def _open(source: Path | BinaryIO, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own limit below says it more clearly than Pillow's warning would.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=FORMATS)
    except UnidentifiedImageError:
        raise VitConvertError(
            f"{name}: not an image file vitpredict can read (JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    except Image.DecompressionBombError as e:
        raise VitConvertError(f"{name}: image too large, refused as a possible decompression bomb ({e})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise VitConvertError(
            f"{name}: image too large ({width}x{height} = {width * height:,} pixels, limit {max_pixels:,}); "
            "refused as a possible decompression bomb")
    return image


def load_rgb(source: str | os.PathLike | Image.Image | bytes, max_pixels: int = MAX_PIXELS,
             name: str | None = None) -> Image.Image:
    """The first frame, decoded, turned upright by its EXIF orientation, as 8-bit RGB.

    `source` may also be a file's bytes (as a cluster reader delivers them); `name` then names it in errors.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        if not len(source):
            raise VitConvertError(f"{name}: empty file (0 bytes), not an image")
        try:
            image = _open(io.BytesIO(source), name, max_pixels)
        except OSError as e:
            raise VitConvertError(f"{name}: cannot read ({e})") from None
    else:
        name = str(source)
        image = open_image(source, max_pixels)
    try:
        image.load()
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow reports broken data all these ways
        raise VitConvertError(f"{name}: cannot decode image ({e})") from None
    except VitConvertError as e:
        raise VitConvertError(f"{name}: {e}") from None
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
