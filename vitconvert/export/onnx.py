"""`export_onnx`: one of our weights files to an ONNX model that carries its own record.

The model is exported at one input size (position embeddings resampled for another, as
`load_model` does), with a dynamic batch axis unless a batch size is fixed. The file's record, at
the exported size, goes into the ONNX `metadata_props` under the same key as in our safetensors
files, so the preprocessing and label set travel with the model. After writing, the model is run in
onnxruntime on a random batch against ours; a difference over `atol` is an error, and nothing is
left on disk unless every step succeeded. Weights over protobuf's 2 GiB (ViT-H/14 in float32) go to
ONNX's external-data file beside the model, `OUT.onnx.data`, which must stay next to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.config import parse_size
from ..core.errors import VitConvertError
from ..formats.paths import check_input, check_output
from ..formats.safetensors_file import atomic_output
from ..formats.weights_file import META_KEY, WeightsRecord, read_record
from ..model.loading import model_from
from ..model.vit import VisionTransformer

INSTALL = "pip install 'vitconvert[onnx]'"
INPUT = "pixels"
OUTPUT_KEY = f"{META_KEY}.output"  # 'logits' or 'features': what the model's one output holds
# A protobuf message cannot exceed 2 GiB; larger weights need ONNX's external-data files.
PROTOBUF_LIMIT = 2**31 - 2**24
CHECK_BATCH = 2  # a dynamic batch axis is checked at a size other than 1, which export could specialise


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote, and how closely onnxruntime reproduced our model."""

    path: Path
    data_path: Path | None  # the external-data file holding the weights, for models over 2 GiB
    input_shape: tuple[int | str, ...]  # (batch, channels, height, width); 'batch' when dynamic
    output: str  # 'logits' or 'features'
    output_shape: tuple[int | str, ...]
    opset: int
    max_abs_diff: float  # onnxruntime vs our model on a random batch
    check_batch: int
    atol: float
    record: WeightsRecord  # as stored in the file's metadata_props


class _Features(torch.nn.Module):
    """The pooled features as the one output (headless models, or `features=True`)."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_pooled(x)


def export_onnx(src: str | os.PathLike, dst: str | os.PathLike, *,
                img_size: int | str | tuple[int, int] | None = None, batch: int | None = None,
                opset: int | None = None, features: bool = False, force: bool = False,
                atol: float = 1e-4) -> OnnxExport:
    """Write our weights file `src` as an ONNX model at `dst`, checked in onnxruntime.

    img_size: R, 'R', 'HxW' or (H, W); default the trained size. batch: a fixed batch size, or None
    for a dynamic batch axis. opset: the ONNX opset (default: the exporter's). features: output the
    pooled features instead of the logits (a model without a head always does).
    """
    if batch is not None and batch < 1:
        raise VitConvertError(f"batch must be at least 1 (or None for a dynamic batch), got {batch}")
    src = check_input(src, "a vitconvert weights file")
    dst = check_output(dst, force, suffix=".onnx")  # before anything slow
    onnx, ort = _runtime()
    record = read_record(src)
    size = record.config.img_size if img_size is None else parse_size(img_size)
    model = model_from(record, src, img_size=size)
    output = "features" if features or record.config.num_classes == 0 else "logits"
    module = _Features(model).eval() if output == "features" else model
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    data_dst = check_output(dst.with_name(dst.name + ".data"), force) if nbytes > PROTOBUF_LIMIT else None
    stored = dataclasses.replace(record, config=model.config, preprocess=record.preprocess.at_size(size))

    proto = _export(module, size, record.config.in_chans, batch, opset, output, str(src))
    for key, value in ((META_KEY, stored.to_json()), (OUTPUT_KEY, output)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "vitconvert"
    used_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and used_opset != opset:  # torch keeps its own opset when it cannot convert down
        raise VitConvertError(f"{src}: this model cannot be expressed in ONNX opset {opset} (torch's exporter "
                              f"writes opset {used_opset} and could not convert it down); ask for a higher "
                              f"opset ({used_opset} works)")

    check_batch = batch or CHECK_BATCH
    x = torch.randn(check_batch, record.config.in_chans, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = module(x).numpy()
    # The data file is committed before the model that names it, and neither unless the check passes.
    with atomic_output(dst, force) as tmp, \
            (atomic_output(data_dst, force) if data_dst else contextlib.nullcontext()) as tmp_data:
        if tmp_data:  # checked under its temporary name, then pointed at the name it will have
            onnx.save_model(proto, str(tmp), save_as_external_data=True, location=tmp_data.name)
        else:
            onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        theirs = session.run(None, {INPUT: x.numpy()})[0]
        del session
        diff = float(abs(theirs - ours).max())
        if not diff <= atol:  # also NaN
            raise VitConvertError(
                f"{src}: onnxruntime's output differs from ours by {diff:.3g} (max abs, atol {atol:g}) "
                f"on a random batch of {check_batch}; nothing was written")
        if tmp_data:
            _relocate_external_data(proto, data_dst.name)
            onnx.save_model(proto, str(tmp))
    dims = tuple(d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim)
    return OnnxExport(path=dst, data_path=data_dst, input_shape=(batch or "batch", record.config.in_chans, *size),
                      output=output, output_shape=dims, opset=used_opset, max_abs_diff=diff,
                      check_batch=check_batch, atol=atol, record=stored)


def _relocate_external_data(proto, location: str) -> None:
    """Point every external-data tensor (saving moved their bytes out of `proto`) at `location`."""
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location


def read_onnx_record(path: str | os.PathLike) -> WeightsRecord:
    """The record an exported ONNX file carries (its preprocessing, labels and config)."""
    onnx, _ = _runtime()
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if META_KEY not in props:
        raise VitConvertError(f"{path}: no vitconvert record in the ONNX metadata_props")
    return WeightsRecord.from_json(props[META_KEY], where=str(path))


def _export(module: torch.nn.Module, size: tuple[int, int], channels: int, batch: int | None,
            opset: int | None, output: str, where: str):
    """The ONNX ModelProto of `module` (torch's dynamo exporter), or a VitConvertError saying why not."""
    example = torch.zeros(batch or CHECK_BATCH, channels, *size)
    shapes = None if batch else ({0: torch.export.Dim("batch", min=1)},)
    chatter = io.StringIO()  # the exporter prints and logs its progress; a failure's reason is in the exception
    try:
        with contextlib.redirect_stdout(chatter), _quiet_logs(), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=shapes,
                                        input_names=[INPUT], output_names=[output], opset_version=opset,
                                        verbose=False, report=False)
    except Exception as e:  # the exporter raises many types; every one means "cannot express this"
        text = " ".join(str(e).split()) or type(e).__name__
        raise VitConvertError(f"{where}: torch's ONNX exporter cannot express this model"
                              f"{f' at opset {opset}' if opset else ''} ({type(e).__name__}: {text[:300]})") from e
    return program.model_proto


@contextlib.contextmanager
def _quiet_logs():
    """The exporter's own log lines (opset fallbacks and the like) off for its call: our errors say it."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=False):
            logger.setLevel(level)


def _runtime():
    """onnx and onnxruntime, or an error saying how to install them (the `onnx` extra)."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise VitConvertError(f"ONNX export needs the onnx, onnxscript and onnxruntime packages "
                              f"({e.name} is missing): {INSTALL}") from None
    return onnx, onnxruntime
