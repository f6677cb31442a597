"""The model prepared for speed: the compiled float32 path, and dynamic int8 linears for the CPU.

`compile_model` is what `load_model(..., compile=True)`, `Predictor(compile=True)` and
`vitpredict --compile` run: inductor with weight freezing (constant weights folded into the graph,
the linears' weights prepacked for oneDNN on the CPU), static shapes. Of the paths PyTorch offers it
measured fastest here (README, "Speed"; `python -m benchmarks --only compile`).
"""

from __future__ import annotations

import warnings

import torch

from ..core.errors import VitConvertError


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile` of an eval-mode model for fixed shapes, weights frozen into the graph.

    Each input shape compiles once, on its first call. Freezing takes effect under
    `torch.inference_mode()` / `no_grad()` (as `Predictor` runs); with gradients on, the call compiles
    without it. The returned module shares the model's attributes (`.config`, `.record`).
    """
    return torch.compile(model, dynamic=False, options={"freezing": True})


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its linear layers computing in int8 (dynamic quantisation, CPU only), in place.

    Weights are quantised per output channel once; activations per tensor at each call; everything
    else (patch embedding, LayerNorm, attention softmax, additions) stays float32. The last block's
    qkv is kept in float32: the class-token shortcut slices its weight (`Attention.forward_first`).
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise VitConvertError("int8 is dynamic quantisation for the CPU; load the model on the CPU")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise VitConvertError("int8 quantises a float32 model; load it without another dtype")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    blocks = getattr(model, "blocks", ())
    keep = f"blocks.{len(blocks) - 1}.attn.qkv" if len(blocks) else None
    spec = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != keep}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True).eval()
