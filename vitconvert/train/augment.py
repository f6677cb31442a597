"""The training augmentation of Google's ViT fine-tuning: a random crop of 5% to 100% of the image's area
(an "inception crop"), resized to the model's input, flipped left to right half the time.

vit_jax's input pipeline draws the crop with `tf.image.sample_distorted_bounding_box(area_range=(0.05,
1.0))`, whose aspect ratios run from 3/4 to 4/3; the draw here is torchvision's RandomResizedCrop
algorithm with those bounds (area and log-aspect uniform, 10 tries, then the whole image). The crop is
then resized and normalised by the file's own preprocessing (`transform.to_tensor`, squashing the crop
to the input size), so training and evaluation inputs differ only by the crop and the flip.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from ..formats.weights_file import Preprocess
from ..inference.transform import to_tensor

AREA = (0.05, 1.0)  # vit_jax: area_range=(0.05, 1.0)
ASPECT = (3 / 4, 4 / 3)  # tf.image.sample_distorted_bounding_box's default aspect_ratio_range
TRIES = 10  # torchvision's RandomResizedCrop; after that, the whole image
FLIP = 0.5


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop covering AREA of the image with an aspect ratio in ASPECT."""
    area = width * height
    log_aspect = (math.log(ASPECT[0]), math.log(ASPECT[1]))
    for _ in range(TRIES):
        target = area * rng.uniform(*AREA)
        aspect = math.exp(rng.uniform(*log_aspect))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def augmented(image: Image.Image, preprocess: Preprocess, rng: np.random.Generator) -> torch.Tensor:
    """A training input of `image`: a random crop, resized and normalised as `preprocess` says, maybe flipped."""
    crop = image.crop(crop_box(image.width, image.height, rng))
    if rng.random() < FLIP:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(crop, replace(preprocess, resize="squash", crop_pct=1.0))
