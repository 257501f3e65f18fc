"""``webdataset:PATTERN``: images and optional class labels from local WebDataset tar shards.

A shard is a tar file whose members are grouped into samples by key, as the ``webdataset`` package does
(``dir/0001.jpg`` and ``dir/0001.cls`` are the ``jpg`` and ``cls`` of sample ``dir/0001``). The pattern is
expanded with webdataset's own rules (braces, ``{000..009}``; ``::`` separates patterns), so the string a
user passes to ``wds.WebDataset`` works here. The order that defines dataset indices: shards in expansion
order, samples in tar-member order inside each; a sample's source id is ``<shard>/<key>`` with the shard's
path relative to the shards' common folder.
"""
from __future__ import annotations

import io
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffprune.data.dataset import ImageDataset
from diffprune.data.decode import GREY_MODES, DatasetError, Decode, pil_array, shape_array, stack_decoded
from diffprune.data.kind import LoadOptions

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif")  # tried in this order
LABEL_KEYS = ("cls", "cls.txt", "class", "label")  # text members holding a class id or name
JSON_LABEL = "json:label"  # the default when a sample has only a JSON member: its "label" field


@dataclass
class _Raw:
    """What the shards hold, before decoding: one entry per sample with an image."""

    ids: list[str]
    blobs: list[bytes]  # encoded image bytes
    labels: list[str] | None  # raw class values as text; None when unlabelled
    skipped: list[str]


def _error(msg: str) -> DatasetError:
    return DatasetError(f"webdataset: {msg}")


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise _error("reading tar shards needs the webdataset package: pip install diffprune[webdataset]") from None
    return webdataset


def expand_shards(pattern: str) -> tuple[Path, list[Path]]:
    """(common folder, shard paths) of ``pattern``, every shard checked to exist.

    Raises DatasetError for remote URLs (not supported: download the shards first), when no shard matches,
    or when some of the expanded names are missing (a brace range that overshoots is a mistake, not a subset).
    """
    expand_urls = _webdataset().shardlists.expand_urls
    if re.match(r"^[a-z][a-z0-9+.-]*://|^pipe:", pattern):
        raise _error(f"'{pattern}' is remote; only local shards are read: download them and pass their path")
    paths = [Path(p).expanduser() for p in expand_urls(pattern)]
    missing = [p for p in paths if not p.is_file()]
    if len(missing) == len(paths):
        raise _error(f"no shard matches '{pattern}' (expanded to {len(paths)} path(s), e.g. '{paths[0]}'); "
                     "check the folder and the {000..009} range")
    if missing:
        raise _error(f"{len(missing)} of {len(paths)} shards of '{pattern}' do not exist, e.g. "
                     f"{', '.join(str(p) for p in missing[:3])}; fix the brace range")
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    return root, paths


def _label_value(sample: dict, key: str, sid: str) -> str:
    """The class of one sample as text, from member ``key`` (``json:FIELD``: a field of a JSON member)."""
    member, _, fld = key.partition(":")
    if member not in sample:
        raise _error(f"sample '{sid}' has no '{member}' member (the class key); every sample needs one, or set "
                     "data.label_column to the member holding the class")
    raw = sample[member]
    if not fld:
        return raw.decode("utf-8").strip()
    try:
        value = json.loads(raw)[fld]
    except (ValueError, KeyError, TypeError):
        raise _error(f"sample '{sid}': '{member}' is not a JSON object with a '{fld}' field") from None
    return str(value).strip()


def _default_label_key(sample: dict) -> str | None:
    for k in LABEL_KEYS:
        if k in sample:
            return k
    if "json" in sample:
        try:
            return JSON_LABEL if "label" in json.loads(sample["json"]) else None
        except (ValueError, TypeError):
            return None
    return None


def read_shards(pattern: str, image_key: str | None, label_key: str | None, skip_bad: bool) -> _Raw:
    """Every sample's encoded image and raw class, in index order (see the module docstring).

    ``image_key``: the member holding the image (default: the first of ``IMAGE_KEYS`` in the first sample
    that has one); ``label_key``: the member holding the class (``json:FIELD`` for a JSON field; default
    ``cls`` or another of ``LABEL_KEYS``, else ``json:label``, else unlabelled), decided on the first sample.
    """
    import tarfile

    wds = _webdataset()
    root, shards = expand_shards(pattern)
    raw = _Raw([], [], None, [])
    labelled: bool | None = None
    for shard in shards:
        name = shard.resolve().relative_to(root).as_posix()
        try:
            samples = list(wds.tarfile_samples([{"url": str(shard)}]))
        except (tarfile.TarError, OSError, ValueError) as e:  # webdataset re-raises tarfile's errors
            raise _error(f"cannot read shard '{shard}': {e}") from None
        if image_key is None:  # the first sample with an image decides
            image_key = next((k for s in samples for k in IMAGE_KEYS if k in s), None)
        if image_key is None or not any(image_key in s for s in samples):
            what = f"'{image_key}'" if image_key else f"image ({', '.join(IMAGE_KEYS)})"
            raise _error(f"shard '{shard}' holds no {what} members; check the pattern or set data.image_column")
        for sample in samples:
            sid = f"{name}/{sample['__key__']}"
            if labelled is None:
                label_key = label_key or _default_label_key(sample)
                labelled = label_key is not None
                raw.labels = [] if labelled else None
            if image_key not in sample:
                if not skip_bad:
                    raise _error(f"sample '{sid}' has no '{image_key}' member (members: "
                                 f"{', '.join(k for k in sample if not k.startswith('__'))}); set "
                                 "data.image_column, or skip such samples with --set data.skip_bad=true")
                raw.skipped.append(f"{sid} (no {image_key})")
                continue
            if labelled:
                raw.labels.append(_label_value(sample, label_key, sid))
            raw.ids.append(sid)
            raw.blobs.append(sample[image_key])
    return raw


def _classes(spec: str, values: list[str]) -> tuple[np.ndarray, list[str]]:
    """(int64 labels, class names): whole numbers are class ids 0..K-1 (names "0".."K-1"; every id needs an
    image), any other text is a class name (sorted, as ImageFolder sorts its folders)."""
    if all(re.fullmatch(r"\d+", v) for v in values):
        labels = np.asarray([int(v) for v in values], dtype=np.int64)
        empty = np.flatnonzero(np.bincount(labels) == 0)
        if len(empty):
            raise _error(f"{spec}: class ids {empty[:10].tolist()} have no sample (ids must be 0..K-1, each used); "
                         "renumber the classes (a class with no images would still get a DRO weight)")
        return labels, [str(k) for k in range(int(labels.max()) + 1)]
    names = sorted(set(values))
    index = {n: k for k, n in enumerate(names)}
    return np.asarray([index[v] for v in values], dtype=np.int64), names


def _read_mode(blobs: list[bytes], channels: int | None) -> str:
    """``L`` if every readable image is grey, else ``RGB`` (headers only), warning when both occur."""
    from PIL import Image

    grey = colour = 0
    for b in blobs:
        try:
            with Image.open(io.BytesIO(b)) as im:
                grey, colour = (grey + 1, colour) if im.mode in GREY_MODES else (grey, colour + 1)
        except Exception:  # unreadable: reported when decoded
            continue
    if grey and colour and channels is None:
        warnings.warn(f"webdataset: {grey} grey and {colour} colour images; decoding all as RGB (grey copied to "
                      "3 channels, alpha dropped); set data.channels=1 to decode all as grey", stacklevel=3)
    return "L" if grey and not colour else "RGB"


def load_shards(spec: str, pattern: str, dec: Decode, image_key: str | None, label_key: str | None,
                skip_bad: bool) -> ImageDataset:
    """``webdataset:PATTERN`` as an ImageDataset of uint8 N x C x H x W images, each decoded as an image
    folder's files are (same mode rule, resize and channel steps; ``dec`` gives size, resize, channels)."""
    from PIL import Image, UnidentifiedImageError
    from rich.progress import track

    raw = read_shards(pattern, image_key, label_key, skip_bad)
    dec = Decode(_read_mode(raw.blobs, dec.channels), dec.size, dec.resize, dec.channels)
    crop = dec.size if dec.resize == "center-crop" else None
    arrays, keep, skipped = [], [], list(raw.skipped)
    for i, b in track(enumerate(raw.blobs), total=len(raw.blobs), description=f"reading {spec}", transient=True):
        try:
            with Image.open(io.BytesIO(b)) as im:
                arrays.append(shape_array(pil_array(im, dec.mode, crop), dec))
            keep.append(i)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if not skip_bad:
                raise _error(f"cannot read the image of sample '{raw.ids[i]}': {e}; fix the shard, or skip "
                             "unreadable images with --set data.skip_bad=true") from None
            skipped.append(f"{raw.ids[i]} ({e})")
    images = stack_decoded(arrays, len(raw.blobs), f"webdataset: '{pattern}'")
    labels, names = None, []
    if raw.labels is not None:
        labels, names = _classes(spec, [raw.labels[i] for i in keep])
    raw.blobs.clear()  # the encoded bytes are no longer needed
    return ImageDataset(images, labels, names, name=spec, skipped=skipped,
                        source_ids=[raw.ids[i] for i in keep])


def load_webdataset(arg: str, o: LoadOptions) -> ImageDataset:
    dec = Decode("RGB", o.resolution, o.resize, o.channels)
    return load_shards(o.spec, arg, dec, o.image_column, o.label_column, o.skip_bad)
