"""The torchvision format: torchvision's VisionTransformer state dicts, against torchvision's own model, weight
enums and transforms (the installed torchvision).

- Logits of torchvision's VisionTransformer (random weights) and ours from the converted file: vit_b_16 as
  torchvision builds it, and small custom VisionTransformer(...)s (with pre_logits, and with the MLP names
  of torchvision before 0.14), at the stored size and at another, where torchvision's reference is its own
  `interpolate_embeddings` of the state dict into a model of that image_size.
- The five builders' architectures (on the meta device) and the preprocessing each weight enum records,
  against torchvision's enums (their `transforms` partials) and its ImageClassification on photos.
- Bad input: shapes of none of the five, a --model or --weights-enum the shapes deny, a conv stem.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.published_layouts import fill_random_
from PIL import Image

from vitconvert import VitConvertError, convert, load_model, read_record
from vitconvert.conversion import torchvision as tv_format
from vitconvert.conversion.source import Request
from vitconvert.inference.transform import to_tensor

tv = pytest.importorskip("torchvision")
from torchvision.models import vision_transformer as tvvit  # noqa: E402

# float32, renames only: what differs is the order of float operations (nn.MultiheadAttention's fused
# kernel against ours). Observed: logits <= 3.6e-7 (custom models, at 32, 48 and 24 px), 2.9e-6 (vit_b_16).
ATOL = 1e-5
# Our 'crop' against torchvision's ImageClassification on PIL images: both resize with Pillow and crop at
# the same offsets, so the inputs are the same floats. Observed: 0.0 on every photo and enum.
PIXEL_ATOL = 1e-6
SMALL = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10)


def small_model(seed: int = 0, **overrides) -> torch.nn.Module:
    return fill_random_(tvvit.VisionTransformer(**{**SMALL, **overrides}), seed).eval()


def batch(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def max_diff(ours: torch.nn.Module, theirs: torch.nn.Module, size: int) -> float:
    x = batch(size)
    return (ours(x) - theirs(x)).abs().max().item()


def at_size(model: torch.nn.Module, size: int, **args) -> torch.nn.Module:
    """torchvision's own way to another image size: interpolate_embeddings on the state dict, loaded into a
    VisionTransformer built for it."""
    state = tvvit.interpolate_embeddings(size, model.patch_size, model.state_dict())
    other = tvvit.VisionTransformer(**{**SMALL, **args, "image_size": size}).eval()
    other.load_state_dict(state)
    return other


def save(model: torch.nn.Module, path: Path, rename: dict[str, str] | None = None) -> Path:
    state = model.state_dict()
    for old, new in (rename or {}).items():
        state = {k.replace(old, new): v for k, v in state.items()}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("args", [{}, {"representation_size": 24}], ids=["head", "pre_logits"])
def test_a_custom_vision_transformer_converts_to_its_logits_at_its_size_and_another(tmp_path, args):
    theirs = small_model(**args)
    record = convert(save(theirs, tmp_path / "vit.pth"), tmp_path / "ours.safetensors", num_heads=4)
    assert record.source.format == "torchvision/VisionTransformer"
    assert record.config.pos_resize == "torchvision"
    ours = load_model(tmp_path / "ours.safetensors").eval()
    assert max_diff(ours, theirs, 32) <= ATOL
    for size in (48, 24):  # larger and smaller grids: both go through interpolate_embeddings
        assert max_diff(ours, at_size(theirs, size, **args), size) <= ATOL


def test_the_stored_position_resize_is_torchvisions_not_timms(tmp_path):
    """align_corners=True: timm's bicubic (antialiased, align_corners off) is far from torchvision's model."""
    theirs = small_model()
    convert(save(theirs, tmp_path / "vit.pth"), tmp_path / "ours.safetensors", num_heads=4, pos_resize="bicubic")
    assert max_diff(load_model(tmp_path / "ours.safetensors").eval(), at_size(theirs, 48), 48) > 100 * ATOL


def test_the_mlp_names_before_torchvision_0_14_convert_as_torchvision_loads_them(tmp_path):
    theirs = small_model(seed=1)
    path = save(theirs, tmp_path / "old.pth", rename={"mlp.0.": "mlp.linear_1.", "mlp.3.": "mlp.linear_2."})
    # torchvision's own loader takes the old names (MLPBlock's _load_from_state_dict: no version saved)
    reloaded = tvvit.VisionTransformer(**SMALL).eval()
    reloaded.load_state_dict(torch.load(path))
    record = convert(path, tmp_path / "ours.safetensors", num_heads=4)
    assert any("linear_1" in note for note in record.notes)
    assert max_diff(load_model(tmp_path / "ours.safetensors").eval(), reloaded, 32) <= ATOL


def test_vit_b_16_as_torchvision_builds_it_converts_to_its_logits(tmp_path):
    theirs = fill_random_(tv.models.vit_b_16(weights=None), 2).eval()
    record = convert(save(theirs, tmp_path / "vit_b_16.pth"), tmp_path / "ours.safetensors")
    assert record.source.format == "torchvision/vit_b_16"
    assert (record.config.num_heads, record.labels) == (12, "imagenet-1k")
    assert record.preprocess == tv_format.WEIGHTS["ViT_B_16_Weights.IMAGENET1K_V1"].preprocess
    x = batch(224)[:1]
    with torch.inference_mode():
        assert (load_model(tmp_path / "ours.safetensors").eval()(x) - theirs(x)).abs().max().item() <= ATOL


class ShapesOnly:
    """A reader with the shapes of a model's state dict (built on the meta device) and no data."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.path = Path(f"{type(model).__name__}.pth")

    def read(self, key: str):
        raise AssertionError("planning reads no tensor")


def enums() -> list[tuple[str, object]]:
    """Every member of torchvision's ViT_*_Weights enums, by our name for it."""
    return [(f"{cls.__name__}.{member.name}", member) for cls in (tvvit.ViT_B_16_Weights, tvvit.ViT_B_32_Weights,
                                                                  tvvit.ViT_L_16_Weights, tvvit.ViT_L_32_Weights,
                                                                  tvvit.ViT_H_14_Weights) for member in cls]


def test_our_table_of_weight_enums_is_torchvisions():
    theirs = {name: member for name, member in enums()}
    assert set(theirs) == set(tv_format.WEIGHTS)
    for name, member in theirs.items():
        transform, ours = member.transforms(), tv_format.WEIGHTS[name]
        assert (transform.crop_size, transform.resize_size) == ([ours.crop], [ours.resize]), name
        assert transform.interpolation.value == ours.interpolation, name
        assert (tuple(transform.mean), tuple(transform.std)) == tv_format.IMAGENET_MEAN_STD
        assert member.meta["min_size"] == (ours.crop, ours.crop) and len(member.meta["categories"]) == 1000
        assert member.url.rsplit("/", 1)[1].startswith(ours.model), name


@pytest.mark.parametrize("name", list(tv_format.WEIGHTS))
def test_each_weight_enums_model_plans_its_architecture_and_transforms(name):
    member = dict(enums())[name]
    builder = getattr(tv.models, tv_format.WEIGHTS[name].model)
    with torch.device("meta"):
        model = builder(image_size=member.meta["min_size"][0])
    plan = tv_format.TORCHVISION.plan(ShapesOnly(model), Request({"weights_enum": name}))
    cfg = plan.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.patch_size) == (
        model.hidden_dim, len(model.encoder.layers), model.encoder.layers[0].num_heads, model.mlp_dim,
        model.patch_size)
    assert cfg.img_size == (model.image_size, model.image_size) and cfg.ln_eps == model.norm_layer.keywords["eps"]
    assert plan.preprocess == tv_format.WEIGHTS[name].preprocess
    # unnamed, the size chooses among the model's enums: the only one at 384, 512 or 518 px
    unnamed = tv_format.TORCHVISION.plan(ShapesOnly(model), Request({}))
    at_size = [n for n, w in tv_format.WEIGHTS.items() if (w.model, w.crop) == (tv_format.WEIGHTS[name].model,
                                                                                 cfg.img_size[0])]
    assert unnamed.preprocess == tv_format.WEIGHTS[at_size[0]].preprocess
    assert ("--weights-enum" in unnamed.notes[0]) == (len(at_size) > 1)


def distinct_transforms() -> list[str]:
    seen, names = set(), []
    for name, w in tv_format.WEIGHTS.items():
        if (w.crop, w.resize, w.interpolation) not in seen:
            seen.add((w.crop, w.resize, w.interpolation))
            names.append(name)
    return names


@pytest.mark.parametrize("name", distinct_transforms())
def test_the_recorded_preprocessing_is_torchvisions_image_classification_on_photos(photos, name):
    transform = dict(enums())[name].transforms()
    pre = tv_format.WEIGHTS[name].preprocess
    for path in photos:
        image = Image.open(path).convert("RGB")
        theirs = transform(image)
        ours = to_tensor(image, pre)
        assert ours.shape == theirs.shape, path.name
        assert (ours - theirs).abs().max().item() <= PIXEL_ATOL, (name, path.name)


# --- bad input ----------------------------------------------------------------------------------------------

def assert_refused(tmp_path: Path, match: str, src: Path, **kwargs) -> str:
    dst = tmp_path / "out.safetensors"
    with pytest.raises(VitConvertError, match=match) as e:
        convert(src, dst, **kwargs)
    assert "\n" not in str(e.value) and not dst.exists() and list(tmp_path.glob("out*")) == []
    return str(e.value)


def test_shapes_of_none_of_the_five_are_named_and_nothing_is_written(tmp_path):
    src = save(small_model(), tmp_path / "vit.pth")
    message = assert_refused(tmp_path, "match none of torchvision's ViTs", src)
    assert "hidden_dim 32, 2 layers, mlp_dim 64, patch 8" in message and "--heads" in message


def test_a_named_model_the_shapes_deny_is_refused(tmp_path):
    src = save(small_model(), tmp_path / "vit.pth")
    assert_refused(tmp_path, "is not a vit_b_16 .*its shapes are hidden_dim 32", src, model="vit_b_16")
    assert_refused(tmp_path, "model 'vit_b_8' is not one of torchvision's ViTs", src, model="vit_b_8")
    with torch.device("meta"):
        b32 = tv.models.vit_b_32()
    with pytest.raises(VitConvertError, match="is not a vit_b_16 .*, a vit_b_32$"):
        tv_format.TORCHVISION.plan(ShapesOnly(b32), Request({"model": "vit_b_16"}))


def test_a_weights_enum_of_another_model_or_size_is_refused(tmp_path):
    src = save(small_model(), tmp_path / "vit.pth")
    assert_refused(tmp_path, "is vit_b_16 at 384 px", src, num_heads=4,
                   weights_enum="ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1")
    assert_refused(tmp_path, "is not one of torchvision's ViT weights", src, num_heads=4, weights_enum="ViT_B_16")


def test_a_conv_stem_is_refused_with_the_reason(tmp_path):
    stem = [tvvit.ConvStemConfig(out_channels=16, kernel_size=3, stride=2) for _ in range(3)]
    src = save(small_model(conv_stem_configs=stem), tmp_path / "stem.pth")
    assert_refused(tmp_path, "conv_stem_configs", src, num_heads=4)


# --- the command line ---------------------------------------------------------------------------------------

def test_vitconvert_convert_recognises_a_torchvision_state_dict_and_takes_its_options(tmp_path, capsys):
    from helpers.cli import vitconvert_cli

    src = save(small_model(), tmp_path / "vit.pth")
    code, out, err = vitconvert_cli(capsys, "convert", src, tmp_path / "o.safetensors", "--heads", "4", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["format"] == "torchvision" and result["left_out"] == {}
    assert read_record(tmp_path / "o.safetensors").config.pos_resize == "torchvision"
    code, _, err = vitconvert_cli(capsys, "convert", src, tmp_path / "p.safetensors", "--heads", "4",
                                  "--weights-enum", "ViT_B_16_Weights.IMAGENET1K_V1")
    assert code == 1 and err.count("\n") == 1 and "is vit_b_16 at 224 px" in err
    code, _, err = vitconvert_cli(capsys, "convert", src, tmp_path / "p.safetensors", "--from", "timm",
                                  "--weights-enum", "ViT_B_16_Weights.IMAGENET1K_V1")
    assert code == 2 and "--weights-enum does not apply to --from timm" in err

