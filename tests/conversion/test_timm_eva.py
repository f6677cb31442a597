"""The timm-eva source format (conversion/timm_eva.py, timm_eva_models.py): timm's whole Eva family (EVA, EVA-02,
PE, RoPE-ViT, DINOv3, LingBot, Sapiens2; the architectures timm/models/eva.py registers, computed from the
installed timm), each converted as `vitconvert convert --model NAME` converts it and run beside timm's own Eva at
its size and at a non-square one; files without a name; bad input; `verify --timm-model` on an Eva."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from helpers.cli import cli_error, vitconvert_cli
from helpers.timm_eva import eva_family, reduced_eva, timm_eva
from safetensors.torch import save_file
from timm.models.eva import Eva

from vitconvert import VitConvertError, convert, load_model, read_record
from vitconvert.conversion.timm_models import create_timm_model, timm_config
from vitconvert.fidelity.verify import verify

# float32, the same weights. Measured over the 65 reduced architectures: at most 1.0e-6 at their size, 1.3e-6 at
# a 3x6 grid (EVA-02 enormous, post-norm); the RoPE tables agree with timm's to the bit (tests/model/test_rope.py),
# the rest is the rounding of our fused q/v bias addition and of the class-token-only last block.
EVA_ATOL = 1e-5
# Architectures of the family our ViT does not express, and why (docs/sources/rope-vits.md lists the same).
EXCLUDED: dict[str, str] = {}
FAMILY = eva_family()


def batch(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def save(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def size_of(kwargs: dict) -> tuple[int, int]:
    s = kwargs["img_size"]
    return (s, s) if isinstance(s, int) else tuple(s)


@pytest.mark.parametrize("name", FAMILY)
def test_every_eva_architecture_converts_to_timms_outputs_at_its_size_and_another(tmp_path, name: str) -> None:
    kwargs = reduced_eva(name)
    reference = timm_eva(name, **kwargs)
    assert isinstance(reference, Eva)
    record = convert(save(reference, tmp_path / "eva.safetensors"), tmp_path / "out.safetensors", model=name,
                     timm_kwargs=kwargs)
    assert record.source.format == f"timm-eva/{name}"
    ours = load_model(tmp_path / "out.safetensors")
    x = batch(size_of(kwargs))
    # timm's Eva at another size: the same weights in its dynamic-size mode (position table resampled bicubic,
    # RoPE computed for the grid, each family's rule).
    dynamic = timm.create_model(name, pretrained=False, **kwargs, dynamic_img_size=True).eval()
    dynamic.load_state_dict(reference.state_dict())
    patch = ours.config.patch_hw
    other = batch((3 * patch[0], 6 * patch[1]), seed=1)
    with torch.inference_mode():
        tokens = reference.forward_features(x)
        diffs = {"forward": (ours(x) - reference(x)).abs().max().item(),
                 "forward_features": (ours.forward_features(x) - tokens).abs().max().item(),
                 "pre_logits": (ours.forward_pooled(x) - reference.forward_head(tokens, pre_logits=True))
                 .abs().max().item(),
                 "3x6 grid": (ours(other) - dynamic(other)).abs().max().item()}
    assert max(diffs.values()) <= EVA_ATOL, diffs


def test_at_least_62_of_the_65_architectures_convert_and_the_exclusions_are_documented() -> None:
    assert len(FAMILY) == 65  # timm 1.0.31
    assert set(EXCLUDED) <= set(FAMILY) and len(FAMILY) - len(EXCLUDED) >= 62
    page = (Path(__file__).parents[2] / "docs" / "sources" / "rope-vits.md").read_text()
    assert f"{len(FAMILY) - len(EXCLUDED)} of the {len(FAMILY)} architectures" in page
    for name, reason in EXCLUDED.items():
        assert f"`{name}`" in page and reason in page


def test_every_member_is_an_eva_and_reads_back_at_full_size_on_the_meta_device() -> None:
    # The real widths and depths (the 7B DINOv3 included), shapes only: what the sweep's reduced models stand for.
    for name in FAMILY:
        model = create_timm_model(name, meta=True)
        assert isinstance(model, Eva), name
        cfg = timm_config(model, name)
        assert cfg.depth == len(model.blocks) and cfg.embed_dim == model.embed_dim


@pytest.mark.parametrize("name", ["vit_pe_core_base_patch16_224", "vit_pe_spatial_base_patch16_512"])
def test_an_eva_file_without_evas_marks_is_timms_until_the_eva_is_named(tmp_path, name: str) -> None:
    """PE Core and Spatial without layer scale hold a VisionTransformer's names: only the name shows the RoPE."""
    kwargs = reduced_eva(name)
    src = save(timm_eva(name, **kwargs), tmp_path / "pe.safetensors")
    with pytest.raises(VitConvertError, match="timm's"):  # read as a VisionTransformer, it is not one
        convert(src, tmp_path / "plain.safetensors", model="vit_base_patch16_224")
    assert not (tmp_path / "plain.safetensors").exists()
    record = convert(src, tmp_path / "out.safetensors", model=name, timm_kwargs=kwargs)
    assert record.source.format == f"timm-eva/{name}" and record.config.rope == "cat"


def test_a_rope_mixed_file_converts_without_a_name_from_its_learned_frequencies(tmp_path) -> None:
    name = "vit_small_patch16_rope_mixed_224"
    kwargs = reduced_eva(name)
    reference = timm_eva(name, **kwargs)
    record = convert(save(reference, tmp_path / "mixed.safetensors"), tmp_path / "out.safetensors")
    assert record.source.format == "timm-eva" and record.config.rope == "mixed"
    assert any("no --model" in note for note in record.notes)
    ours = load_model(tmp_path / "out.safetensors")
    x = batch(size_of(kwargs))
    with torch.inference_mode():
        assert (ours(x) - reference(x)).abs().max().item() <= EVA_ATOL


def test_an_eva_file_without_a_name_says_to_name_the_model_and_writes_nothing(capsys, tmp_path) -> None:
    name = "eva02_tiny_patch14_224"
    src = save(timm_eva(name, **reduced_eva(name)), tmp_path / "eva02.safetensors")
    dst = tmp_path / "out.safetensors"
    code, err = cli_error(capsys, "convert", src, dst)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert "rotary position embedding" in err and "--model NAME" in err
    assert not dst.exists()


@pytest.mark.parametrize("case", ["named", "unnamed"])
def test_rope_frequencies_of_another_shape_are_a_one_line_error_and_nothing_is_written(capsys, tmp_path,
                                                                                       case: str) -> None:
    name = "vit_small_patch16_rope_mixed_ape_224"
    kwargs = reduced_eva(name)
    state = timm_eva(name, **kwargs).state_dict()
    state["rope.freqs"] = torch.zeros(2, 2, 2, 8)  # 8 per head where its 32-wide heads have 16
    src = tmp_path / "mixed.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(src))
    dst = tmp_path / "out.safetensors"
    if case == "named":
        with pytest.raises(VitConvertError, match=r"rope\.freqs") as e:
            convert(src, dst, model=name, timm_kwargs=kwargs)
        assert "\n" not in str(e.value)
    else:
        code, err = cli_error(capsys, "convert", src, dst)
        assert code == 1 and err.count("\n") == 1
        assert "rope.freqs has shape (2, 2, 2, 8)" in err and "(2, 2, 2, 16)" in err
    assert not dst.exists()


@pytest.mark.parametrize("name", ["eva02_small_patch14_224", "vit_base_patch16_sapiens2",
                                  "vit_small_patch16_rope_mixed_224", "vit_small_patch16_dinov3"])
def test_verify_runs_timms_eva_on_the_files_weights(tmp_path, name: str) -> None:
    kwargs = reduced_eva(name)
    src = save(timm_eva(name, **kwargs), tmp_path / "eva.safetensors")
    convert(src, tmp_path / "out.safetensors", model=name, timm_kwargs=kwargs)
    for source in (None, src):  # our tensors under Eva's names, and the original through timm's filter
        report = verify(tmp_path / "out.safetensors", name, source=source, timm_kwargs=kwargs)
        assert not report.architecture_differences and report.max_abs_diff <= EVA_ATOL, report
        assert report.top1_agreement == 1.0


def test_the_record_says_what_was_renamed_and_that_rope_is_computed(tmp_path) -> None:
    name = "eva02_base_patch14_224"  # separate q, k, v projections, no key bias
    kwargs = reduced_eva(name)
    convert(save(timm_eva(name, **kwargs), tmp_path / "eva.safetensors"), tmp_path / "out.safetensors",
            model=name, timm_kwargs=kwargs)
    record = read_record(tmp_path / "out.safetensors")
    notes = " ".join(record.notes)
    assert "q_proj/k_proj/v_proj" in notes and "rotary position embeddings (cat)" in notes
    assert record.config.rope_ref_grid == (16, 16) and not record.config.k_bias


def test_the_cli_recognises_an_eva_file_and_prints_its_record(capsys, tmp_path) -> None:
    name = "vit_small_patch16_rope_mixed_224"
    src = save(timm_eva(name, **reduced_eva(name)), tmp_path / "mixed.safetensors")
    code, out, _ = vitconvert_cli(capsys, "convert", src, tmp_path / "out.safetensors", "--json")
    assert code == 0
    printed = json.loads(out)
    assert printed["format"] == "timm-eva" and printed["record"]["config"]["rope"] == "mixed"
