"""Files stored as bfloat16 or float16: the stored dtype is storage only. `load_model`, `verify` and
`Predictor` compute in float32 unless asked otherwise, and give what timm gives on the rounded weights."""

from __future__ import annotations

import pytest
import torch
from helpers.timm_reference import timm_vit
from PIL import Image

from vitconvert import Predictor, convert_timm, load_model, verify

ATOL = 1e-4  # float32 both sides on the same (rounded) weights: a rename, so expect rounding only
DTYPES = ["bfloat16", "float16"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ViT-Ti/16 (full width, 2 blocks) as a timm state dict, and timm's model holding it."""
    root = tmp_path_factory.mktemp("dtypes")
    model = timm_vit("vit_tiny_patch16_224", depth=2, seed=5)
    torch.save(model.state_dict(), root / "t.pth")
    return root / "t.pth", model


def stored_as(checkpoint, tmp_path, dtype: str):
    """The checkpoint converted with `dtype` storage, and timm's model holding the rounded weights."""
    src, model = checkpoint
    convert_timm(src, tmp_path / f"t-{dtype}.safetensors", dtype=dtype)
    import timm

    rounded = timm.create_model("vit_tiny_patch16_224", depth=2, pretrained=False).eval()
    rounded.load_state_dict({k: v.to(getattr(torch, dtype)).float() for k, v in model.state_dict().items()})
    return tmp_path / f"t-{dtype}.safetensors", rounded


def batch() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_model_computes_in_float32_whatever_the_file_stores(checkpoint, tmp_path, dtype: str) -> None:
    path, reference = stored_as(checkpoint, tmp_path, dtype)
    model = load_model(path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.inference_mode():
        diff = (model(batch()) - reference(batch())).abs().max().item()
    assert diff <= ATOL  # observed 1.8e-6 (bfloat16), 1.9e-6 (float16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_model_gives_the_dtype_asked_for(checkpoint, tmp_path, dtype: str) -> None:
    path, _ = stored_as(checkpoint, tmp_path, dtype)
    model = load_model(path, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(batch().double()).dtype == torch.float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_verify_runs_on_a_half_precision_file(checkpoint, tmp_path, dtype: str) -> None:
    path, _ = stored_as(checkpoint, tmp_path, dtype)
    # timm on the file's own tensors: the conversion is exact
    own = verify(path, "vit_tiny_patch16_224", timm_kwargs={"depth": 2})
    assert own.ok and own.max_abs_diff <= ATOL  # observed 0 (every token computed on both sides)
    # timm on the float32 original: what the storage rounding costs, reported, not a crash
    original = verify(path, "vit_tiny_patch16_224", timm_kwargs={"depth": 2}, source=checkpoint[0])
    assert ATOL < original.max_abs_diff < 0.1 and not original.ok  # observed 2.8e-2 (bfloat16), 3.4e-3 (float16)
    assert original.top1_agreement == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_predictor_on_a_half_precision_file(checkpoint, tmp_path, cat_jpg, dtype: str) -> None:
    path, reference = stored_as(checkpoint, tmp_path, dtype)
    predictor = Predictor(path)
    assert {p.dtype for p in predictor.model.parameters()} == {torch.float32}
    x = predictor.transform(Image.open(cat_jpg).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        expected = reference(x).softmax(-1)[0]
    probs = predictor.probabilities([cat_jpg])[0]
    assert (probs - expected).abs().max().item() <= 1e-7  # observed 9.3e-9 (bfloat16), 7.5e-9 (float16)
