"""Image files decoded with Pillow, labelled by class folder or by a list file."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field, ValidationInfo, field_validator, model_validator

from slimgraph.data._common import ExistingDir, ExistingFile, SourceConfigBase, sample_spans
from slimgraph.data.base import Batch
from slimgraph.errors import DataError, SpecError

__all__ = ["IMAGE_SUFFIXES", "ImageFolderConfig", "ImageSource", "ImageTransform"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File suffixes (any case) taken as images when scanning class folders."""

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class ImageTransform:
    """How decoded images become a float32 batch: geometry per image, arithmetic per batch."""

    resize: int | None
    crop: int | None
    interpolation: Literal["bilinear", "bicubic", "nearest"]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: Literal["NCHW", "NHWC"]

    def pixels(self, image: Image.Image, path: Path) -> np.ndarray:
        """The resized, cropped RGB image as (H, W, 3) uint8."""
        image = image.convert("RGB")
        if self.resize is not None:
            size = _short_side_size(image.size, self.resize)
            image = image.resize(size, _RESAMPLING[self.interpolation])
        if self.crop is not None:
            image = _centre_crop(image, self.crop, path)
        return np.asarray(image)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 to ``(pixels * scale - mean) / std`` as float32 in ``layout``."""
        std = np.asarray(self.std, dtype=np.float64)
        factor = (self.scale / std).astype(np.float32)
        offset = (-np.asarray(self.mean, dtype=np.float64) / std).astype(np.float32)
        if self.layout == "NCHW":
            pixels = pixels.transpose(0, 3, 1, 2)
            factor, offset = factor[:, None, None], offset[:, None, None]
        batch = np.empty(pixels.shape, dtype=np.float32)
        np.multiply(pixels, factor, out=batch)
        batch += offset
        return batch


def _short_side_size(size: tuple[int, int], short: int) -> tuple[int, int]:
    width, height = size
    if width <= height:
        return short, max(1, int(short * height / width))
    return max(1, int(short * width / height)), short


def _centre_crop(image: Image.Image, crop: int, path: Path) -> Image.Image:
    width, height = image.size
    if crop > width or crop > height:
        raise DataError(
            f"image_folder.crop: {str(path)!r} is {width}x{height} after resizing, "
            f"smaller than the {crop}x{crop} crop; set resize to at least {crop}"
        )
    left = round((width - crop) / 2)
    top = round((height - crop) / 2)
    return image.crop((left, top, left + crop, top + crop))


class ImageFolderConfig(SourceConfigBase):
    """RGB images, one sub-folder per class or a list file of ``path, class_index`` lines.

    Each image becomes ``(pixel * scale - mean) / std`` per channel, as float32.
    """

    kind: Literal["image_folder"] = Field(
        default="image_folder", description="Source kind: image files read with Pillow."
    )
    root: ExistingDir | None = Field(
        default=None,
        description="Folder with one sub-folder per class (index = sorted name order).",
    )
    labels_file: ExistingFile | None = Field(
        default=None,
        description="Lines 'relative/path, class_index' instead of class folders; paths are "
        "relative to root, or to the file's folder when root is unset.",
    )
    resize: int | None = Field(
        default=None, ge=1, description="Resize so that the short side has this many pixels."
    )
    crop: int | None = Field(
        default=None, ge=1, description="Cut a centred square of this many pixels a side."
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        default="bilinear", description="Resampling filter used by resize."
    )
    scale: float = Field(default=1 / 255, description="Factor applied to the 0-255 pixels.")
    mean: list[float] = Field(
        default=[0.0, 0.0, 0.0], description="Per-channel (R, G, B) value subtracted after scale."
    )
    std: list[float] = Field(
        default=[1.0, 1.0, 1.0], description="Per-channel (R, G, B) divisor applied after mean."
    )
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Axis order of each batch.")
    workers: int | None = Field(
        default=None,
        ge=1,
        description="Threads that decode images (default: one per CPU core, at most 8).",
    )

    @field_validator("mean", "std")
    @classmethod
    def _three_channels(cls, value: list[float], info: ValidationInfo) -> list[float]:
        name = info.field_name
        if len(value) != 3:
            raise SpecError(f"image_folder.{name}: expected 3 values (R, G, B), found {value}")
        if name == "std" and any(v == 0 for v in value):
            raise SpecError(f"image_folder.std: values must be non-zero, found {value}")
        return value

    @model_validator(mode="after")
    def _root_or_list(self) -> ImageFolderConfig:
        if self.root is None and self.labels_file is None:
            raise SpecError("image_folder: set root (class folders) or labels_file (or both)")
        return self

    def transform(self) -> ImageTransform:
        return ImageTransform(
            resize=self.resize,
            crop=self.crop,
            interpolation=self.interpolation,
            scale=self.scale,
            mean=(self.mean[0], self.mean[1], self.mean[2]),
            std=(self.std[0], self.std[1], self.std[2]),
            layout=self.layout,
        )

    def open(self) -> ImageSource:
        class_names: tuple[str, ...] | None = None
        if self.labels_file is not None:
            root = self.root if self.root is not None else self.labels_file.parent
            files, labels = _read_list_file(self.labels_file, root)
            origin = self.labels_file
        elif self.root is not None:
            files, labels, class_names = _scan_class_folders(self.root)
            origin = self.root
        else:
            raise SpecError("image_folder: set root (class folders) or labels_file (or both)")
        source = ImageSource(
            files,
            labels,
            self.transform(),
            class_names=class_names,
            limit=self.limit,
            workers=self.workers,
        )
        classes = len(np.unique(labels))
        logger.info("image_folder: %d images in %d classes from %s", len(files), classes, origin)
        return source


def _scan_class_folders(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    classes = sorted(e for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(classes):
        found = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        files.extend(found)
        labels.extend([index] * len(found))
    if not files:
        raise DataError(
            f"image_folder.root: no images under {str(root)!r}: expected one sub-folder per "
            f"class holding {'/'.join(sorted(IMAGE_SUFFIXES))} files, found "
            f"{len(classes)} sub-folders and no image in them"
        )
    return files, np.asarray(labels, dtype=np.int64), tuple(folder.name for folder in classes)


def _read_list_file(list_file: Path, root: Path) -> tuple[list[Path], np.ndarray]:
    """Entries in the file's own order, which is the source's order."""
    files: list[Path] = []
    labels: list[int] = []
    text = list_file.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, index = line.rpartition(",")
        if not sep:
            name, _, index = line.strip().rpartition(" ")
        try:
            label = int(index)
        except ValueError:
            label = -1
        if not name.strip() or label < 0:
            raise DataError(
                f"image_folder.labels_file: {str(list_file)!r} line {number}: expected "
                f"'relative/path, class_index', found {line!r}"
            )
        files.append(root / name.strip())
        labels.append(label)
    if not files:
        raise DataError(f"image_folder.labels_file: {str(list_file)!r} lists no images")
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise DataError(
            f"image_folder.labels_file: {len(missing)} of {len(files)} listed images are "
            f"missing under {str(root)!r}, the first is {str(missing[0])!r}"
        )
    return files, np.asarray(labels, dtype=np.int64)


class ImageSource:
    """Decodes each batch's images when the batch is asked for; nothing is cached.

    Images of a batch are decoded on a pool of threads (Pillow releases the GIL while it
    decodes and resamples); the batch keeps the source's order.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: np.ndarray,
        transform: ImageTransform,
        *,
        class_names: tuple[str, ...] | None = None,
        limit: int | None = None,
        workers: int | None = None,
    ) -> None:
        self._files = list(files)[:limit]
        self._labels = labels[:limit]
        self._transform = transform
        self._workers = workers or min(8, os.cpu_count() or 1)
        self.class_names = class_names
        """Class folder names in label order; None when labels come from a list file."""

    def __len__(self) -> int:
        return len(self._files)

    @property
    def labels(self) -> np.ndarray:
        """Every sample's label, known without decoding any image."""
        return self._labels.copy()

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        spans = sample_spans(len(self._files), batch_size, limit)
        with ThreadPoolExecutor(self._workers, thread_name_prefix="slimgraph-images") as pool:
            for start, stop in spans:
                arrays = list(pool.map(self._decode, self._files[start:stop]))
                yield Batch(
                    inputs=(self._transform.normalise(_stack_same_size(arrays, start)),),
                    labels=self._labels[start:stop].copy(),
                )

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """The samples at ``indices``, decoding only those."""
        rows = np.asarray(indices, dtype=np.int64)
        return ImageSource([self._files[i] for i in rows], self._labels[rows], self._transform,
                           class_names=self.class_names, workers=self._workers)

    def _decode(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return self._transform.pixels(image, path)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"image_folder: cannot decode {str(path)!r} ({exc})") from exc


def _stack_same_size(arrays: list[np.ndarray], start: int) -> np.ndarray:
    shapes = sorted({array.shape for array in arrays})
    if len(shapes) > 1:
        raise DataError(
            f"image_folder: images {start}-{start + len(arrays) - 1} differ in size "
            f"({', '.join(f'{h}x{w}' for h, w, _ in shapes)}); set resize and crop"
        )
    return np.stack(arrays)
