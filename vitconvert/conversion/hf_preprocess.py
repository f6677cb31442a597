"""transformers' image processors (`preprocessor_config.json`) and our `Preprocess`, both ways.

The geometry transformers' processors have: a resize to height x width (aspect ratio not kept), or of the
shortest edge (aspect ratio kept), then optionally a centre crop; ConvNext's `crop_pct` below 384 pixels.
Ours: 'squash' (height x width) or 'crop' (timm's: the short side to size / crop_pct, then the centre).
What one side cannot say is recorded as the closest the other can, with a note that says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..core.errors import VitConvertError
from ..core.json_types import is_int, is_real
from ..formats.weights_file import Preprocess

IMAGENET_STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_DEFAULT = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# Pillow's filter numbers, which the processors store as `resample`.
RESAMPLE = {2: "bilinear", 3: "bicubic"}
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# The processor classes' own defaults (transformers 5.23), for keys a file leaves out; `shortest` says whether
# a bare integer size means the shortest edge (else height = width).
PROCESSORS: dict[str, dict[str, Any]] = {
    "ViTImageProcessor": dict(size={"height": 224, "width": 224}, resample=2, do_center_crop=False,
                              mean_std=IMAGENET_STANDARD, shortest=False),
    "DeiTImageProcessor": dict(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224},
                               resample=3, do_center_crop=True, mean_std=IMAGENET_STANDARD, shortest=False),
    "BitImageProcessor": dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                              do_center_crop=True, mean_std=OPENAI_CLIP, shortest=True),
    "ConvNextImageProcessor": dict(size={"shortest_edge": 384}, crop_pct=224 / 256, resample=3,
                                   do_center_crop=False, mean_std=IMAGENET_STANDARD, shortest=True),
}
PROCESSORS["CLIPImageProcessor"] = PROCESSORS["BitImageProcessor"]
# SigLIP's: a resize to 224 x 224 (aspect ratio not kept), bicubic, mean = std = 0.5.
PROCESSORS["SiglipImageProcessor"] = dict(size={"height": 224, "width": 224}, resample=3, do_center_crop=False,
                                          mean_std=IMAGENET_STANDARD, shortest=False)
PROCESSORS["DINOv3ViTImageProcessor"] = dict(size={"height": 224, "width": 224}, resample=2, do_center_crop=False,
                                             mean_std=IMAGENET_DEFAULT, shortest=False)
# BEiT's (Data2VecVision's too): ViT's but bicubic, a crop only when asked.
PROCESSORS["BeitImageProcessor"] = dict(size={"height": 224, "width": 224}, crop_size={"height": 224, "width": 224},
                                        resample=3, do_center_crop=False, mean_std=IMAGENET_STANDARD, shortest=False)
# What transformers' AutoImageProcessor picks for a model type without a preprocessor_config.json of its own
# (the processors the published checkpoints of each carry).
DEFAULT_PROCESSOR = {"vit": "ViTImageProcessor", "deit": "DeiTImageProcessor", "dinov2": "BitImageProcessor",
                     "clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor", "siglip2": "SiglipImageProcessor",
                     "dinov2_with_registers": "BitImageProcessor", "vit_msn": "ViTImageProcessor",
                     "vit_mae": "ViTImageProcessor", "vit-hybrid": "BitImageProcessor",
                     "beit": "BeitImageProcessor", "data2vec-vision": "BeitImageProcessor"}


def _processor_class(d: Mapping[str, Any]) -> str | None:
    name = d.get("image_processor_type") or str(d.get("feature_extractor_type") or "").replace(
        "FeatureExtractor", "ImageProcessor") or None
    return name.removesuffix("Fast").removesuffix("Pil") if isinstance(name, str) else None


def _size(value: Any, shortest: bool, key: str, where: str) -> dict[str, int]:
    if is_int(value) and value > 0:
        return {"shortest_edge": value} if shortest else {"height": value, "width": value}
    keys = ("height", "width", "shortest_edge", "longest_edge")
    if isinstance(value, Mapping) and value and all(k in keys and is_int(v) and v > 0 for k, v in value.items()):
        return dict(value)
    raise VitConvertError(f"{where}: preprocessor_config.json: {key} must be a positive integer or a dict of "
                          f"height/width/shortest_edge in pixels, got {value!r}")


def _triple(value: Any, key: str, where: str) -> tuple[float, float, float]:
    if is_real(value):
        value = [value] * 3
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(is_real(v) for v in value)):
        raise VitConvertError(f"{where}: preprocessor_config.json: {key} must be 3 numbers, got {value!r}")
    return tuple(float(v) for v in value)


def crop_pct_for(crop: int, short_side: int) -> float:
    """A crop_pct whose resize rule, floor(crop / crop_pct), gives `short_side` exactly (crop / short_side
    itself can round to one pixel less)."""
    pct = crop / short_side
    while math.floor(crop / pct) < short_side:
        pct = math.nextafter(pct, 0.0)
    return pct


def preprocess_from(processor: Mapping[str, Any] | None, model_type: str, img_size: tuple[int, int],
                    where: str) -> tuple[Preprocess, list[str]]:
    """Our record of what transformers' processor does (None: no preprocessor_config.json), and notes on
    what it could only approximate."""
    if processor is None:
        name = DEFAULT_PROCESSOR[model_type]
        pre, notes = preprocess_from({"image_processor_type": name}, model_type, img_size, where)
        first = f"no preprocessor_config.json: transformers' {name} defaults assumed, at the model's size"
        return pre.at_size(img_size), [first, *notes]
    notes: list[str] = []
    d, name = processor, _processor_class(processor)
    if name not in PROCESSORS:
        notes.append(f"image processor {name or '(unnamed)'} read by its keys, with ViTImageProcessor's defaults")
    defaults = PROCESSORS.get(name, PROCESSORS["ViTImageProcessor"])
    size = _size(d.get("size", defaults["size"]), defaults["shortest"], "size", where)
    crop = d.get("do_center_crop", defaults["do_center_crop"])
    crop_size = _size(d.get("crop_size", defaults.get("crop_size", size)), False, "crop_size", where) if crop else None
    if crop_size is not None and not {"height", "width"} <= crop_size.keys():
        raise VitConvertError(f"{where}: preprocessor_config.json: crop_size must give height and width, "
                              f"got {crop_size!r}")
    resample = d.get("resample", defaults["resample"])
    interpolation = RESAMPLE.get(resample) if is_int(resample) else None
    if interpolation is None:
        interpolation = "bicubic"
        shown = RESAMPLE_NAMES.get(resample, resample) if is_int(resample) else resample
        notes.append(f"resample {shown!r} recorded as bicubic (ours: bilinear or bicubic)")
    mean, std = (_triple(d.get(k, default), k, where) for k, default in zip(("image_mean", "image_std"),
                                                                         defaults["mean_std"], strict=False))
    if not d.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    # transformers: x * rescale_factor, then (x - mean) / std. Ours: x / 255 first, so both scale by 255 * factor.
    factor = d.get("rescale_factor", 1 / 255) if d.get("do_rescale", True) else 1.0
    if not (is_real(factor) and factor > 0):
        raise VitConvertError(f"{where}: preprocessor_config.json: rescale_factor must be positive, got {factor!r}")
    if abs(factor * 255 - 1) > 1e-12:
        mean, std = tuple(m / (255 * factor) for m in mean), tuple(s / (255 * factor) for s in std)

    if not d.get("do_resize", True):
        notes.append("the processor does not resize (do_resize false): recorded as a resize to the model's size")
        return Preprocess(size=img_size, interpolation=interpolation, mean=mean, std=std), notes
    common = dict(interpolation=interpolation, mean=mean, std=std)
    if name == "ConvNextImageProcessor" and "shortest_edge" in size:
        edge, pct = size["shortest_edge"], d.get("crop_pct", defaults["crop_pct"])
        if edge >= 384:  # ConvNext warps to edge x edge at 384 and above
            return Preprocess(size=(edge, edge), resize="squash", **common), notes
        if not (is_real(pct) and 0 < pct <= 1):
            raise VitConvertError(f"{where}: preprocessor_config.json: crop_pct must be in (0, 1], got {pct!r}")
        # ConvNext's int(edge / crop_pct) is timm's floor of the same quotient
        return Preprocess(size=(edge, edge), resize="crop", crop_pct=pct, **common), notes
    if "shortest_edge" in size:
        if "longest_edge" in size:
            notes.append("the processor's longest_edge limit is not recorded")
        if crop_size is None:
            notes.append(f"the processor resizes the shortest edge to {size['shortest_edge']} without a crop (any "
                         f"aspect ratio); recorded as a resize to the model's size, {img_size[0]}x{img_size[1]}")
            return Preprocess(size=img_size, **common), notes
        ch, cw = crop_size["height"], crop_size["width"]
        if ch != cw:
            notes.append(f"a {ch}x{cw} crop after a shortest-edge resize is recorded as timm's crop, which fits "
                         "the crop's shape instead")
        pct = crop_pct_for(max(ch, cw), size["shortest_edge"])
        return Preprocess(size=(ch, cw), resize="crop", crop_pct=min(pct, 1.0), **common), notes
    h, w = size.get("height", img_size[0]), size.get("width", img_size[1])
    if crop_size is None:
        return Preprocess(size=(h, w), resize="squash", **common), notes
    ch, cw = crop_size["height"], crop_size["width"]
    notes.append(f"transformers' processor resizes to {h}x{w} (aspect ratio not kept), then crops {ch}x{cw}; "
                 "recorded as timm's crop, which keeps the aspect ratio: the same on square images")
    return Preprocess(size=(ch, cw), resize="crop", crop_pct=min(crop_pct_for(ch, h), 1.0), **common), notes


def processor_for(pre: Preprocess) -> tuple[dict[str, Any], list[str]]:
    """The preprocessor_config.json closest to `pre`, and notes on where it differs."""
    notes = []
    if pre.interpolation == "bilinear_tf":
        notes.append("Google's resize (bilinear without antialiasing, on float pixels) is written as transformers' "
                     "bilinear, which antialiases when it shrinks")
    common = dict(do_resize=True, resample=3 if pre.interpolation == "bicubic" else 2, do_rescale=True,
                  rescale_factor=1 / 255, do_normalize=True, image_mean=list(pre.mean), image_std=list(pre.std),
                  do_convert_rgb=True)
    h, w = pre.size
    if pre.resize == "squash":
        return dict(image_processor_type="ViTImageProcessor", size={"height": h, "width": w},
                    do_center_crop=False, **common), notes
    crop = {"height": h, "width": w}
    if h == w:  # timm's rule: the short side to floor(size / crop_pct), then the centre
        return dict(image_processor_type="BitImageProcessor", size={"shortest_edge": math.floor(h / pre.crop_pct)},
                    do_center_crop=True, crop_size=crop, **common), notes
    notes.append(f"timm's crop to {h}x{w} keeps the aspect ratio; transformers' processor resizes to "
                 f"{math.floor(h / pre.crop_pct)}x{math.floor(w / pre.crop_pct)} first (aspect ratio not kept)")
    return dict(image_processor_type="BitImageProcessor",
                size={"height": math.floor(h / pre.crop_pct), "width": math.floor(w / pre.crop_pct)},
                do_center_crop=True, crop_size=crop, **common), notes
