"""verify: our model against timm's with numbers, and an exit status that means agreement."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import published_layouts as pl
from vitconvert import convert_jax, verify
from vitconvert.cli import cli

CAT = "tests/data/cat.jpg"


@pytest.fixture
def tiny_b16(tmp_path):
    model = pl.random_timm_vit("vit_base_patch16_224", depth=2, seed=4)
    pl.write_npz(model, tmp_path / "b.npz", "vit_jax")
    convert_jax(tmp_path / "b.npz", tmp_path / "b.safetensors")
    return tmp_path


def test_matched_activation_agrees_exactly_with_timm_loading_the_npz(tiny_b16) -> None:
    report = verify(tiny_b16 / "b.safetensors", "vit_base_patch16_224", source=tiny_b16 / "b.npz")
    assert report.ok and report.max_abs_diff <= 1e-5  # measured: 0
    assert (report.ours_activation, report.timm_activation) == ("gelu_tanh", "gelu_tanh")
    assert report.top5_agreement == 1.0 and "timm's npz loader" in report.timm_weights
    assert [s.stage for s in report.stages] == ["blocks.0", "blocks.1", "norm"]


def test_stock_timm_gelu_shows_the_difference_and_where_it_starts(tiny_b16) -> None:
    report = verify(tiny_b16 / "b.safetensors", "vit_base_patch16_224", timm_act="gelu", atol=1e-6)
    assert not report.ok and report.max_abs_diff > 1e-6
    assert report.first_divergence == "blocks.0"  # the first MLP is the first place GELU acts


def test_image_input_and_other_resolution(tiny_b16) -> None:
    report = verify(tiny_b16 / "b.safetensors", "vit_base_patch16_224", img_size=(320, 256), image=CAT)
    assert report.ok and "cat.jpg through the file's preprocessing" in report.input


def test_cli_exit_status_is_0_within_tolerance_and_1_outside(tiny_b16) -> None:
    args = ["verify", str(tiny_b16 / "b.safetensors"), "--timm-model", "vit_base_patch16_224", "--json"]
    ok = CliRunner().invoke(cli, args)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True
    bad = CliRunner().invoke(cli, [*args, "--timm-act", "gelu", "--atol", "1e-7"])
    assert bad.exit_code == 1
    out = json.loads(bad.output)
    assert out["ok"] is False and out["first_divergence"] == "blocks.0" and out["max_abs_diff"] > 1e-7


def test_hybrids_compare_with_the_jax_resnet_numerics_and_show_timms_own(tmp_path) -> None:
    model = pl.random_timm_vit("timm_r26_s32", seed=1)
    pl.write_npz(model, tmp_path / "h.npz", "vit_jax")
    convert_jax(tmp_path / "h.npz", tmp_path / "h.safetensors")
    ours_in_timm = verify(tmp_path / "h.safetensors", "vit_small_r26_s32_224")
    assert ours_in_timm.ok and ours_in_timm.max_abs_diff <= 1e-5  # measured: 0
    from_npz = verify(tmp_path / "h.safetensors", "vit_small_r26_s32_224", source=tmp_path / "h.npz")
    assert from_npz.ok and from_npz.max_abs_diff <= 1e-5  # measured: 3.8e-6
    # timm's own standardization, sqrt(var + 1e-8) instead of std + 1e-5, is a real difference
    stock = verify(tmp_path / "h.safetensors", "vit_small_r26_s32_224", timm_act="gelu_tanh", atol=1e-5)
    assert not stock.ok and stock.max_abs_diff > 1e-5
