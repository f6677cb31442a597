"""Inference images/s of our ViT and timm's on the same weights, same process, same batch (CPU).

    python -m benchmarks.inference [--model vit_base_patch16_224] [--batch 8] [--res 224] [--repeats 10]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import interleaved_medians, machine, table


def models(timm_name: str, res: int):
    import timm

    from vitconvert.loading import at_size, build_with_weights
    from vitconvert.timm2torch import infer_config

    theirs = timm.create_model(timm_name, pretrained=False, img_size=res).eval()
    state = theirs.state_dict()
    cfg = infer_config({k: tuple(v.shape) for k, v in state.items()}, timm_name,
                       num_heads=theirs.blocks[0].attn.num_heads)
    ours = build_with_weights(*at_size(cfg, state, (res, res)))
    return ours, theirs


def run(timm_name: str = "vit_base_patch16_224", batch: int = 8, res: int = 224, repeats: int = 10,
        dtype: torch.dtype = torch.float32) -> dict[str, float]:
    ours, theirs = models(timm_name, res)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = torch.randn(batch, 3, res, res, dtype=dtype)

    def step(model):
        def call():
            with torch.inference_mode():
                model(x)
        return call

    seconds = interleaved_medians({"vitconvert": step(ours), "timm": step(theirs)}, repeats)
    return {name: batch / s for name, s in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    ips = run(args.model, args.batch, args.res, args.repeats)
    print(f"machine: {machine()}")
    print(f"{args.model} at {args.res}, batch {args.batch}, float32, median of {args.repeats} interleaved runs")
    print(table([["", "images/s", "vs timm"],
                 ["vitconvert", f"{ips['vitconvert']:.2f}", f"{ips['vitconvert'] / ips['timm']:.2f}x"],
                 ["timm", f"{ips['timm']:.2f}", "1.00x"]]))


if __name__ == "__main__":
    main()
