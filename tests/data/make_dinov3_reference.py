"""Writes tests/data/dinov3/: small DINOv3 release-layout files with random weights, and what DINOv3's own
forward makes of them, for tests/conversion/test_dinov3.py.

DINOv3's code is under the DINOv3 License, not ours, so none of it is in this repository: this script imports
it from a checkout given on the command line (facebookresearch/dinov3; `dinov3/models`, `dinov3/layers`,
`dinov3/utils` are all it needs, with torch) and keeps only its outputs. Run from the repository root:

    python tests/data/make_dinov3_reference.py /path/to/dinov3-checkout tests/data/dinov3

Each variant is a state dict as DinoVisionTransformer.state_dict() writes it (torch.save, the release files'
format), built by the hub's own hyper-parameters for that family (dinov3/hub/backbones.py) at a width of 32;
its outputs are DINOv3's `forward_features` (x_norm_clstoken, x_storage_tokens, x_norm_patchtokens) at 224x224
and 160x288, and `get_intermediate_layers(n=2, reshape=True, return_class_token=True, return_extra_tokens=True)`
at 224x224, for the inputs `reference_input` makes (the test makes them again from the seed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

SIZES = {"224": (224, 224), "160x288": (160, 288)}
WIDTH = dict(embed_dim=32, depth=2, num_heads=2)  # head width 16: 4 RoPE periods, as any DINOv3 head of 64 has 16
# The hub's settings shared by every ViT release (dinov3/hub/backbones.py), then each family's own.
COMMON = dict(patch_size=16, pos_embed_rope_base=100, pos_embed_rope_normalize_coords="separate",
              pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32", layerscale_init=1.0e-05,
              norm_layer="layernormbf16", ffn_bias=True, proj_bias=True, n_storage_tokens=4, mask_k_bias=True)
VARIANTS = {
    "vits_b_l": dict(ffn_ratio=4, qkv_bias=True, ffn_layer="mlp"),  # ViT-S/16, B/16, L/16
    "plus": dict(ffn_ratio=6, qkv_bias=True, ffn_layer="swiglu"),  # ViT-S+/16, L+/16, H+/16
    "7b": dict(ffn_ratio=3, qkv_bias=False, ffn_layer="swiglu64", untie_global_and_local_cls_norm=True),
}


def reference_input(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random and of a size that makes each block matter (layer scale near 1, norms near 1);
    the buffers (RoPE periods, the key-bias mask) as DINOv3's init_weights set them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight")):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim >= 2 and not name.endswith("_token") and not name.endswith("_tokens"):
                p.copy_(noise / p.shape[-1] ** 0.5 if p.ndim == 2 else noise * 0.05)
            else:
                p.copy_(0.3 * noise)


def main(checkout: str, out: str) -> None:
    sys.path.insert(0, checkout)
    from dinov3.models.vision_transformer import DinoVisionTransformer

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed, (name, variant) in enumerate(VARIANTS.items()):
        model = DinoVisionTransformer(**COMMON, **WIDTH, **variant)
        model.init_weights()
        randomize_(model, seed)
        model.eval()
        torch.save(model.state_dict(), out_dir / f"{name}.pth")
        arrays = {}
        with torch.inference_mode():
            for size_name, size in SIZES.items():
                x = reference_input(size)
                f = model.forward_features(x)
                arrays[f"{size_name}/input_sum"] = x.double().sum().numpy()
                arrays[f"{size_name}/class_token"] = f["x_norm_clstoken"].numpy()
                arrays[f"{size_name}/storage_tokens"] = f["x_storage_tokens"].numpy()
                arrays[f"{size_name}/patch_tokens"] = f["x_norm_patchtokens"].numpy()
            layers = model.get_intermediate_layers(reference_input(SIZES["224"]), n=2, reshape=True,
                                                   return_class_token=True, return_extra_tokens=True)
            for i, (patches, cls, extra) in enumerate(layers):
                arrays[f"layers/{i}/patches"] = patches.numpy()
                arrays[f"layers/{i}/class_token"] = cls.numpy()
                arrays[f"layers/{i}/extra_tokens"] = extra.numpy()
        np.savez(out_dir / f"{name}.npz", **arrays)
        print(f"wrote {out_dir / name}.pth and .npz", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:3])
