"""RoPE ViT-B/16 inference, ours vs timm's Eva on the same weights, same process, same batch (CPU, float32).

    python -m benchmarks.rope [--sizes 224 448] [--batch 1] [--repeats 5]

timm's Eva is built at each size (its RoPE tables made at construction, for that grid); ours is converted from
its state dict as `vitconvert convert --model NAME` converts it and built at that size (its tables made on the
first call, once per grid). The two models of a row are timed interleaved.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import interleaved_medians, machine, markdown, realistic_random

# Naver's axial RoPE-ViT (cat RoPE, interleaved pairs, class-token pooling) and DINOv3 (periods on centred
# coordinates, rotate-half pairs, 4 registers, mean pooling, layer scale, no qkv bias).
MODELS = ("vit_base_patch16_rope_224", "vit_base_patch16_dinov3")


def models(timm_name: str, res: int):
    """(ours, timm's Eva) holding the same weights, both at `res`."""
    import timm

    from vitconvert.conversion.timm_eva import to_our_names
    from vitconvert.conversion.timm_models import timm_config
    from vitconvert.model.loading import build_with_weights

    theirs = realistic_random(timm.create_model(timm_name, pretrained=False, img_size=res, num_classes=1000))
    cfg = timm_config(theirs, timm_name)
    ours = build_with_weights(cfg, to_our_names(theirs.state_dict(), torch.cat))
    return ours.eval(), theirs.eval()


def run(sizes: list[int], batch: int, repeats: int, warmup: int = 1) -> list[dict]:
    rows = []
    for name in MODELS:
        for res in sizes:
            ours, theirs = models(name, res)
            x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0))

            def step(model, x=x):
                def call():
                    with torch.inference_mode():
                        return model(x)
                return call

            with torch.inference_mode():
                diff = (ours(x) - theirs(x)).abs().max().item()
            seconds = interleaved_medians({"ours": step(ours), "timm": step(theirs)}, repeats, warmup)
            rows.append({"model": name, "res": res, "batch": batch, "diff": diff,
                         **{k: batch / s for k, s in seconds.items()}})
    return rows


def table(rows: list[dict]) -> str:
    lines = [["model", "input", "batch", "timm Eva img/s", "ours img/s", "ours/timm", "max |logit diff|"]]
    for r in rows:
        lines.append([r["model"], f"{r['res']}x{r['res']}", str(r["batch"]), f"{r['timm']:.2f}", f"{r['ours']:.2f}",
                      f"{r['ours'] / r['timm']:.2f}x", f"{r['diff']:.1e}"])
    return markdown(lines)


def text(rows: list[dict], repeats: int) -> str:
    worst = min(r["ours"] / r["timm"] for r in rows)
    return (f"RoPE ViT-B/16, float32, CPU, images/s (higher is better), median of {repeats} interleaved runs after "
            "a warm-up; the same weights (`realistic_random`) in timm's Eva and in ours converted from its state "
            "dict. Our RoPE tables are made once per grid (on the warm-up call) and reused.\n\n" + table(rows)
            + f"\n\nTarget: ours >= 1.0x timm's Eva: worst row {worst:.2f}x, {'met' if worst >= 1.0 else 'NOT met'}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(text(run(args.sizes, args.batch, args.repeats), args.repeats))


if __name__ == "__main__":
    main()
