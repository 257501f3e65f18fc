"""Decoding images into uint8 C x H x W arrays, the ground floor of ``data/``: every loader that reads image
files or blobs (image folders, CSVs, the decoded-folder cache, Hugging Face datasets, WebDataset shards) decodes
through ``Decode`` here, so an image becomes the same array whatever holds it."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from diffprune.data.transforms import center_crop_pil, pad_to, resize_to, to_channels

RESIZE_MODES = ("pad", "resize", "center-crop")
DECODE_BATCH = 256  # files decoded per thread-pool batch: the most decoded images held in RAM at once
DECODE_THREADS = min(8, os.cpu_count() or 1)
GREY_MODES = ("L", "1", "I;16", "I", "F")


class DatasetError(ValueError):
    """A dataset could not be loaded; the message says which file or spec and what to do."""


def _read_image(path: Path, mode: str, crop: int | None = None) -> np.ndarray:
    """Decode one file as PIL ``mode``: uint8 H x W (``L``) or H x W x 3 (``RGB``).

    With ``crop`` the ADM centre crop to ``crop`` x ``crop`` is done here, on the PIL image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return pil_array(im, mode, crop)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # PIL raises all four on bad files
        raise DatasetError(f"cannot read image {path}: {e}") from None
    except Image.DecompressionBombError as e:  # over 2x PIL's MAX_IMAGE_PIXELS: refused, not decoded
        raise DatasetError(f"cannot read image {path}: {e}") from None


def pil_array(im, mode: str, crop: int | None = None) -> np.ndarray:
    """A PIL image as uint8 H x W (``L``) or H x W x 3 (``RGB``), ADM-centre-cropped to ``crop`` if given."""
    im = im.convert(mode)
    return center_crop_pil(im, crop) if crop else np.asarray(im)


@dataclass(frozen=True)
class Decode:
    """How one image file becomes a uint8 C x H x W array; the same steps with or without a cache."""

    mode: str  # PIL mode to read as, "L" or "RGB" (from the first readable file)
    size: int | None  # target side in pixels; None keeps the native size
    resize: str  # one of RESIZE_MODES
    channels: int | None  # 1 or 3 to convert to after resizing; None keeps ``mode``'s channels


def decode_file(path: Path, dec: Decode) -> np.ndarray:
    """One file -> uint8 C x H x W: geometry first, then channel conversion (as ``load_dataset`` does for arrays)."""
    return shape_array(_read_image(path, dec.mode, dec.size if dec.resize == "center-crop" else None), dec)


def shape_array(a: np.ndarray, dec: Decode) -> np.ndarray:
    """A decoded H x W (x 3) array -> uint8 C x H x W at ``dec``'s size and channels."""
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if dec.size is not None and dec.resize == "pad":
        a = pad_to(a[None], dec.size)[0]
    elif dec.size is not None and dec.resize == "resize":
        a = resize_to(a[None], dec.size)[0]
    if dec.channels is not None:
        a = to_channels(a[None], dec.channels)[0]
    return np.ascontiguousarray(a)


def stack_decoded(arrays: list[np.ndarray], total: int, what: str) -> np.ndarray:
    """uint8 N x C x H x W of the decoded images of ``what`` (a spec or folder, for the messages), refusing none
    readable out of ``total`` and images that differ in size."""
    if not arrays:
        raise DatasetError(f"{what}: none of the {total} images could be read")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetError(f"{what}: images differ in size {sorted(shapes)[:3]}...; "
                           "set data.resolution to bring them to one size")
    return np.stack(arrays)


def decode_stream(
    files: list[tuple[Path, int]], dec: Decode, skip_bad: bool, start: int = 0
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield (file index, C x H x W uint8 or None if unreadable and ``skip_bad``), in file order from ``start``.

    ``DECODE_BATCH`` files at a time go to ``DECODE_THREADS`` threads (Pillow releases the GIL while
    decoding and resampling), so at most one batch of decoded images is held here.
    """

    def one(i: int) -> np.ndarray | None:
        try:
            return decode_file(files[i][0], dec)
        except DatasetError as e:
            if not skip_bad:
                raise DatasetError(f"{e}; fix or remove it, or skip unreadable files with "
                                   f"--set data.skip_bad=true") from None
            return None

    with ThreadPoolExecutor(max(1, DECODE_THREADS)) as pool:
        for lo in range(start, len(files), DECODE_BATCH):
            idx = range(lo, min(lo + DECODE_BATCH, len(files)))
            yield from zip(idx, pool.map(one, idx))


def relative_ids(root: Path, files: list[tuple[Path, int]], skipped: set[int] = frozenset()) -> list[str]:
    """POSIX paths relative to ``root`` of the files that were read (``skipped``: file indices left out);
    a file outside ``root`` keeps its path as given."""
    return [(f.relative_to(root) if f.is_relative_to(root) else f).as_posix()
            for i, (f, _) in enumerate(files) if i not in skipped]


def probe_mode(files: list[tuple[Path, int]], channels: int | None = None) -> str:
    """``L`` if every readable file is grey, else ``RGB`` (reads headers only, of all files: a folder that
    mixes grey, RGB and RGBA is decoded as RGB, with a warning saying how many grey files are converted).
    ``data.channels`` overrides the result."""
    import warnings

    from PIL import Image

    grey = colour = 0
    for f, _ in files:
        try:
            with Image.open(f) as im:
                if im.mode in GREY_MODES:
                    grey += 1
                else:
                    colour += 1
        except Exception:
            continue
    if grey and colour and channels is None:
        warnings.warn(f"imagefolder: {grey} grey and {colour} colour images; decoding all as RGB (grey copied to "
                      f"3 channels, alpha dropped); set data.channels=1 to decode all as grey", stacklevel=2)
    return "L" if grey and not colour else "RGB"
