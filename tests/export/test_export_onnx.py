"""`vitconvert export --to onnx` / `export_onnx`: onnxruntime reproduces our model, the record travels
in metadata_props, the batch axis is dynamic unless fixed, and what cannot be written is an error
that leaves nothing on disk.

Needs the `onnx` extra (onnx, onnxscript, onnxruntime), which `.[test]` installs.
"""

from __future__ import annotations

import sys

import pytest

ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need the onnx extra: pip install '.[onnx]'")
onnx = pytest.importorskip("onnx", reason="ONNX export tests need the onnx extra: pip install '.[onnx]'")

import torch  # noqa: E402
from helpers.vit_weights import TINY, our_vit, write_test_weights  # noqa: E402

from vitconvert import VitConvertError, load_model  # noqa: E402
from vitconvert.export.onnx import export_onnx, read_onnx_record  # noqa: E402

# The bound. Observed: 1e-6 to 9e-6 on these models (float32 rounding of another kernel order).
ATOL = 1e-4
SMALL = TINY.replace(img_size=(64, 64), num_classes=10)
MODELS = {
    "token": SMALL,
    "gap": SMALL.replace(pool="gap", fc_norm=True),
    "gap-jax": SMALL.replace(pool="gap"),  # LayerNorm on every token, then the mean
    "distilled": SMALL.replace(distilled=True),
    "headless": SMALL.replace(num_classes=0),
    # RoPE at the exported size (its tables constants of the graph), in each of timm's Eva variants.
    "rope-cat": SMALL.replace(rope="cat", rope_ref_grid=(16, 16), rope_grid_offset=1.0, rope_grid_indexing="xy"),
    "rope-mixed": SMALL.replace(rope="mixed", rope_grid_indexing="xy", pos_embed="none", layer_scale=True),
    "rope-dinov3": SMALL.replace(rope="dinov3", rope_rotate_half=True, rope_temperature=100.0, reg_tokens=4,
                                 pos_embed="none", k_bias=False, pool="gap"),
}


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"pixels": x.numpy()})[0])


def batch(n: int, size: tuple[int, int], seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")

    def make(name: str):
        cfg = MODELS[name]
        names = [f"class {i}" for i in range(cfg.num_classes)] or None  # names stored in the file travel too
        return write_test_weights(folder / f"{name}.safetensors", our_vit(cfg).state_dict(), cfg, labels=names)
    return make


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [None, (96, 128)], ids=["trained size", "96x128"])
def test_onnxruntime_reproduces_our_model_at_batch_1_and_3(weights, tmp_path, name, size):
    src = weights(name)
    done = export_onnx(src, tmp_path / "m.onnx", img_size=size)
    model = load_model(src, img_size=size)
    hw = size or (64, 64)
    assert done.input_shape == ("batch", 3, *hw) and done.max_abs_diff <= ATOL
    for n in (1, 3):
        x = batch(n, hw)
        with torch.inference_mode():
            ours = model.forward_pooled(x) if done.output == "features" else model(x)
        theirs = run_onnx(done.path, x)
        assert theirs.shape == ours.shape == (n, 10 if done.output == "logits" else 64)
        assert (theirs - ours).abs().max().item() <= ATOL


def test_the_record_travels_in_metadata_props_at_the_exported_size(weights, tmp_path):
    src = weights("token")
    export_onnx(src, tmp_path / "m.onnx", img_size="96x128")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["vitconvert.output"] == "logits"
    record = read_onnx_record(tmp_path / "m.onnx")
    assert record.config == SMALL.replace(img_size=(96, 128))
    assert record.preprocess.size == (96, 128)
    assert (record.preprocess.resize, record.preprocess.crop_pct, record.preprocess.mean) == ("crop", 0.9, (0.5,) * 3)
    assert record.labels == tuple(f"class {i}" for i in range(10))


def test_a_fixed_batch_is_fixed_in_the_graph(weights, tmp_path):
    done = export_onnx(weights("token"), tmp_path / "m.onnx", batch=3, opset=18)
    dims = [d.dim_value for d in onnx.load(str(done.path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 3, 64, 64] and done.opset == 18 and done.check_batch == 3
    run_onnx(done.path, batch(3, (64, 64)))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_onnx(done.path, batch(1, (64, 64)))


def test_features_export_the_pooled_features(weights, tmp_path):
    src = weights("distilled")
    done = export_onnx(src, tmp_path / "f.onnx", features=True)
    x = batch(3, (64, 64))
    with torch.inference_mode():
        model = load_model(src)
        tokens = model.forward_features(x)  # every token after the final norm
        expected = (tokens[:, 0] + tokens[:, 1]) / 2  # DeiT: class and distillation tokens averaged
    assert done.output == "features" and done.output_shape == ("batch", 64)
    assert (run_onnx(done.path, x) - expected).abs().max().item() <= ATOL


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_opset_that_cannot_express_the_model_is_an_error_and_writes_nothing(weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # LayerNormalization arrived in opset 17: torch writes 18 and cannot convert down to 13.
    with pytest.raises(VitConvertError, match="cannot be expressed in ONNX opset 13 .* ask for a higher opset"):
        export_onnx(weights("token"), out / "m.onnx", opset=13)
    assert leftovers(out) == []


def test_a_failed_check_writes_nothing_and_keeps_an_existing_file(weights, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(VitConvertError, match=r"onnxruntime's output differs from ours by .* nothing was written"):
        export_onnx(weights("token"), out, atol=1e-12, force=True)  # no float32 export is that exact
    assert out.read_bytes() == b"previous" and leftovers(tmp_path) == ["m.onnx"]


def test_weights_over_protobufs_limit_go_to_an_external_data_file_beside_the_model(weights, tmp_path, monkeypatch):
    """ViT-H/14 in float32 (2.5 GiB) cannot be one protobuf; the limit is lowered here so a tiny model takes
    that path: onnxruntime loads the pair from its final names, and a failed check leaves neither."""
    import vitconvert.export.onnx as export

    monkeypatch.setattr(export, "PROTOBUF_LIMIT", 0)
    out = tmp_path / "out"
    out.mkdir()
    done = export_onnx(weights("token"), out / "m.onnx")
    assert done.data_path == out / "m.onnx.data" and leftovers(out) == ["m.onnx", "m.onnx.data"]
    # the weights moved out (tensors under 1 KiB stay inline, as ONNX does): observed 109 KB and 599 KB
    assert (out / "m.onnx").stat().st_size * 4 < (out / "m.onnx.data").stat().st_size
    model = load_model(weights("token"))
    x = batch(3, (64, 64))
    with torch.no_grad():
        ours = model(x)
    assert (run_onnx(out / "m.onnx", x) - ours).abs().max().item() <= ATOL
    assert read_onnx_record(out / "m.onnx").labels == model.record.labels
    for name in ("m.onnx", "m.onnx.data"):
        (out / name).unlink()
    with pytest.raises(VitConvertError, match="nothing was written"):
        export_onnx(weights("token"), out / "m.onnx", atol=1e-12)
    assert leftovers(out) == []


def test_an_existing_output_is_refused_without_force(weights, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"previous")
    with pytest.raises(VitConvertError, match="exists; pass --force"):
        export_onnx(weights("token"), tmp_path / "m.onnx")


def test_without_the_onnx_packages_the_error_says_how_to_install(weights, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(VitConvertError, match=r"onnxruntime is missing\): pip install 'vitconvert\[onnx\]'"):
        export_onnx(weights("token"), tmp_path / "m.onnx")


def test_the_command_prints_the_check(weights, tmp_path, capsys):
    from vitconvert.cli import cli
    from vitconvert.cli.errors import run

    with pytest.raises(SystemExit) as e:
        run(cli, ["export", str(weights("gap")), "--to", "onnx", str(tmp_path / "m.onnx"), "--res", "96x128"])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    assert "input   (batch, 3, 96, 128) float32" in out and "output  logits (batch, 10)" in out
    diff = float(out.split("max abs diff ")[1].split()[0])
    assert diff <= ATOL


EXPORT_PROCESS = ("import sys\n"
                  "from vitconvert.cli import main\n"
                  "try:\n    main()\n"
                  "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")


@pytest.mark.parametrize("mistake", ["existing", "not .onnx"])
def test_an_output_mistake_is_refused_before_torch_is_imported(weights, tmp_path, mistake):
    import os
    import subprocess
    from pathlib import Path

    out = tmp_path / ("m.onnx" if mistake == "existing" else "m.txt")
    if mistake == "existing":
        out.write_bytes(b"previous")
    expected = (f"error: output {out} exists; pass --force to replace it" if mistake == "existing" else
                f"error: output {out}: the file written is onnx; give a name ending in .onnx")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", EXPORT_PROCESS, "export", str(weights("token")), "--to", "onnx",
                           str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 1 and proc.stderr.splitlines() == [expected, "torch imported: False"]
    assert out.read_bytes() == b"previous" if mistake == "existing" else not out.exists()
