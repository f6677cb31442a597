"""The model prepared for speed: the fastest float32 path, and dynamic int8 linears for the CPU.

`compile_model` is what `load_model(..., compile=True)`, `Predictor(compile=True)` and `vitpredict
--compile` run. On the CPU in float32 that is oneDNN's linear layers with their weights reordered once
into oneDNN's blocked layout and the MLP's GELU fused into the first one: of the paths PyTorch offers
(inductor with or without weight freezing, TorchScript's freeze + optimize_for_inference) it measured
the fastest, since the linears are most of the time and oneDNN's kernels on a prepacked weight beat
MKL's sgemm on the plain one (the figures, with their machine: benchmarks/RESULTS.md, "compile" and
"peers"; docs/speed.md). Another CPU's BLAS may do better (Intel's MKL on an Intel CPU was not
measured), so the choice is timed on the blocks' widest linear layer once a process (`packing_speedup`),
and where packing is not the faster the model stays eager. Elsewhere (a GPU, another dtype) it is
inductor with weight freezing, static shapes.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings

import torch
from torch import nn

from ..core.errors import VitConvertError, VitConvertWarning


def compile_model(model: nn.Module) -> nn.Module:
    """`model` (eval mode) prepared for the fastest inference path on its device and dtype.

    CPU float32 (with oneDNN, as in every x86 and ARM build of torch): the linear layers replaced in
    place by `PackedLinear`, the MLP's GELU fused into its first layer, where `packing_speedup` times
    that faster on this CPU (else the model as it is, with a `VitConvertWarning`); no compiler, so
    nothing to wait for. Otherwise `torch.compile` with weight freezing for fixed shapes: each input shape
    compiles on its first call, and freezing takes effect under `torch.inference_mode()` / `no_grad()`.
    Either way the result computes what the model does (within float rounding) and keeps its
    attributes (`.config`, `.record`); it is for inference, not for training or saving.
    """
    param = next(model.parameters())
    if param.device.type == "cpu" and param.dtype == torch.float32 and torch.backends.mkldnn.is_available():
        names = _linear_names(model)
        if not names:
            return model
        per_token = [name for name in names if name.startswith("blocks.")] or names  # the head: one row an image
        widest = max((model.get_submodule(name) for name in per_token), key=lambda m: m.weight.numel())
        speedup = packing_speedup(widest.in_features, widest.out_features)
        if speedup > 1:
            return pack_linears(model)
        warnings.warn(f"compile=True: on this CPU oneDNN's packed linear layers ran at {speedup:.2f}x the speed of "
                      "the plain ones, so the model stays as it is (float32 eager is the fastest path here)",
                      VitConvertWarning, stacklevel=3)  # the caller of load_model
        return model
    return torch.compile(model, dynamic=False, options={"freezing": True})


def compiled_for_static_shapes(model: nn.Module) -> bool:
    """Whether `model` is `compile_model`'s torch.compile result, which compiles once per input shape.

    Asked of every model, eager ones too: `torch._dynamo` is looked up, never imported (importing it is
    most of a cold one-image run), and a model torch.compile made has imported it already."""
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule)


@functools.cache
def packing_speedup(in_features: int, out_features: int, rows: int = 256) -> float:
    """How many times faster `PackedLinear` ran than `F.linear` on a (rows, in) input to `out_features`, on
    this CPU with torch's threads: best of 3 after a warm-up each, once a process per shape, so that a CPU
    where packing does not pay keeps the eager model (what it found on the machine measured: docs/speed.md)."""
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    x = torch.randn(rows, in_features, generator=gen)
    packed = PackedLinear(linear)

    def best(fn) -> float:
        fn(x)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
        return min(times)  # the least disturbed by other work on the machine

    with torch.inference_mode():
        return best(linear) / best(packed)


class PackedLinear(nn.Module):
    """A float32 linear layer (optionally followed by GELU) run by oneDNN on a weight reordered once.

    `F.linear` goes through MKL's sgemm, which re-reads the weight in its plain layout every call;
    oneDNN's kernels on a weight already in their blocked layout skip that (how much faster, and where:
    docs/speed.md), and fusing the GELU saves a pass over the MLP's widest activation.
    """

    def __init__(self, linear: nn.Linear, gelu: str | None = None) -> None:
        super().__init__()
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, None))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        # oneDNN's attribute and algorithm: GELU as erf ('none') or its tanh approximation
        self.attr, self.algorithm = ("gelu", gelu) if gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.packed_weight, self.bias,
                                               self.attr, [], self.algorithm)
        return y.reshape(*lead, self.out_features)


def pack_linears(model: nn.Module) -> nn.Module:
    """`model` with its linear layers as `PackedLinear`, in place; each MLP's GELU fused into fc1."""
    for name in _linear_names(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        act = getattr(parent, "act", None) if child == "fc1" else None
        if isinstance(act, nn.GELU):  # Mlp: fc2(act(fc1(x))) becomes fc2(fc1_with_gelu(x))
            approximate = "tanh" if act.approximate == "tanh" else "none"
            setattr(parent, child, PackedLinear(getattr(parent, child), approximate))
            parent.act = nn.Identity()
        else:
            setattr(parent, child, PackedLinear(getattr(parent, child)))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """`model` with its linear layers computing in int8 (dynamic quantisation, CPU only), in place.

    Weights are quantised per output channel once; activations per tensor at each call; everything
    else (patch embedding, LayerNorm, attention softmax, additions) stays float32.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise VitConvertError("int8 is dynamic quantisation for the CPU; load the model on the CPU")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise VitConvertError("int8 quantises a float32 model; load it without another dtype")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name in _linear_names(model)}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True).eval()


def _linear_names(model: nn.Module) -> list[str]:
    """The linear layers a fast path may replace: all but the last block's qkv, whose weight the
    class-token shortcut slices (`Attention.forward_first`), so it stays an `nn.Linear`."""
    blocks = getattr(model, "blocks", ())
    keep = f"blocks.{len(blocks) - 1}.attn.qkv" if len(blocks) else None
    return [name for name, module in model.named_modules() if type(module) is nn.Linear and name != keep]
