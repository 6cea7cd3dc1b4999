"""Turning image folders, arrays and `tf.data` into batched `(raw pixels, labels)` datasets.

Images stay raw pixels (0-255, RGB); the base carries its own preprocessing.
Grayscale images become RGB and RGBA images lose their alpha channel. Bad data
(a missing folder, a class without images, a corrupt file, labels out of range)
raises a `DataError` (or `DataNotFoundError`) that names what is wrong and how
to fix it, before any training starts.
"""

from finetunekit.data._arrays import as_dataset, check_image_size, from_arrays
from finetunekit.data._augment import (
    AUGMENTATION_PRESETS,
    FlipRotateZoom,
    augmentation,
    augmentation_layer,
)
from finetunekit.data._folders import (
    DEFAULT_IMAGE_SIZE,
    IMAGE_FORMATS,
    DirectoryData,
    from_directory,
)
from finetunekit.data._guards import check_pixels, warn_lost_classes
from finetunekit.data._labels import LabelInfo, check_labels, inspect_labels
from finetunekit.data._prepare import Prepared, prepare
from finetunekit.data._split import held_out, split_by_content

__all__ = [
    "split_by_content",
    "held_out",
    "from_directory",
    "DirectoryData",
    "from_arrays",
    "as_dataset",
    "prepare",
    "Prepared",
    "augmentation",
    "augmentation_layer",
    "FlipRotateZoom",
    "check_image_size",
    "AUGMENTATION_PRESETS",
    "IMAGE_FORMATS",
    "DEFAULT_IMAGE_SIZE",
    "LabelInfo",
    "inspect_labels",
    "check_labels",
    "check_pixels",
    "warn_lost_classes",
]
