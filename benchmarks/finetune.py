"""Fine-tuning speed on the CPU: `vitconvert.finetune` against a plain timm training loop, and the data
pipeline against the model alone.

    python -m benchmarks.finetune [--rounds 3] [--steps 9] [--batch 32]

ViT-Ti/16 at 224 (`realistic_random` weights, as our weights file with AugReg's preprocessing: bicubic,
crop 0.9), float32, batch 32, over the 300 training images of tests/data/fashion-mnist (28x28 PNGs, so
decoding is cheap and the resize to 224 is most of the pipeline) with the default augmentation (random
crop and flip). Each variant runs in a process of its own, so its peak RSS is its own; rounds interleave
the variants:

- finetune: `vitconvert.finetune(...)` as a user calls it (images read in the training process: the
  default, no workers);
- timm loop: timm's `vit_tiny_patch16_224` with the same weights and head, fed the same batches by a
  DataLoader over the same dataset, SGD momentum 0.9, `clip_grad_norm_(1.0)`, the warm-up + cosine
  schedule, cross-entropy: the loop a timm user writes for the same recipe;
- ours alone / timm alone: that loop on one batch made beforehand, over and over: the training step
  without any image to read.

Images/s counts steps 2 to N (the first pays one-time costs). Targets: finetune >= 1.0x the timm loop,
and >= 0.9x ours alone (the data pipeline keeps up).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, markdown, realistic_random

DATA = ROOT / "tests" / "data" / "fashion-mnist" / "train"
VARIANTS = ["finetune", "timm loop", "ours alone", "timm alone"]


def write_weights(path: Path) -> Path:
    import timm

    from vitconvert import Preprocess, ViTConfig, save_weights

    model = realistic_random(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    save_weights(model.state_dict(), path, config=ViTConfig(embed_dim=192, num_heads=3, mlp_dim=768),
                 labels="imagenet-1k", force=True,
                 preprocess=Preprocess(size=(224, 224), resize="crop", crop_pct=0.9, interpolation="bicubic"))
    return path


def _plain_loop(model, batches, steps: int, batch: int) -> float:
    """The recipe written as a timm user writes it; images/s over steps 2 to `steps`."""
    import torch

    from vitconvert.train.recipe import lr_factor

    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, 0))
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    for step in range(steps):
        if step == 1:
            start = time.perf_counter()
        x, y = next(batches)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return (steps - 1) * batch / (time.perf_counter() - start)


def child(variant: str, weights: Path, steps: int, batch: int) -> dict:
    """One variant in this process: images/s and peak RSS."""
    import itertools

    import torch

    from vitconvert.train.data import Images, Schedule, Steps, loader, read_labelled

    data = read_labelled(DATA)
    classes = len(data.classes)
    if variant == "finetune":
        from vitconvert.train.finetune import finetune

        marks = {}

        def on_step(log) -> None:
            marks[log.step] = time.perf_counter()

        with tempfile.TemporaryDirectory() as tmp:
            finetune(weights, DATA, Path(tmp) / "out.safetensors", steps=steps, batch_size=batch, on_step=on_step)
        ips = (steps - 1) * batch / (marks[steps] - marks[1])
    else:
        from vitconvert.model.loading import load_state_dict
        from vitconvert.train.model import finetuning_model

        record, state = load_state_dict(weights)
        model = finetuning_model(record, state, classes)
        if variant.startswith("timm"):
            import timm

            ours = model
            model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes)
            model.load_state_dict(ours.state_dict())
        if variant.endswith("loop"):
            images = Images(data, record.preprocess, augment=True, seed=0)
            batches = loader(images, Steps(Schedule(len(data), batch, 0), 0, steps), workers=0)
        else:
            one = next(loader(Images(data, record.preprocess, augment=True, seed=0),
                              Steps(Schedule(len(data), batch, 0), 0, 1), workers=0))
            batches = itertools.repeat(one)
        ips = _plain_loop(model, batches, steps, batch)
    return {"images_per_s": ips, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def run(rounds: int, steps: int = 9, batch: int = 32) -> dict:
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_weights(Path(tmp) / "ti16.safetensors")
        for _ in range(rounds):
            for variant in VARIANTS:
                out = subprocess.run([sys.executable, "-m", "benchmarks.finetune", "--child", variant, "--weights",
                                      str(weights), "--steps", str(steps), "--batch", str(batch)],
                                     cwd=ROOT, capture_output=True, text=True, check=True)
                results[variant].append(json.loads(out.stdout.splitlines()[-1]))
    return {"rounds": rounds, "steps": steps, "batch": batch, "results": results}


def text(result: dict) -> str:
    res = result["results"]
    ips = {v: statistics.median(r["images_per_s"] for r in res[v]) for v in VARIANTS}
    rss = {v: max(r["peak_rss_mib"] for r in res[v]) for v in VARIANTS}
    rows = [["variant", "images/s (median)", "each round", "peak RSS (MiB)"]]
    rows += [[v, f"{ips[v]:.1f}", ", ".join(f"{r['images_per_s']:.1f}" for r in res[v]), f"{rss[v]:.0f}"]
             for v in VARIANTS]
    vs_timm, keeps_up = ips["finetune"] / ips["timm loop"], ips["finetune"] / ips["ours alone"]
    return (f"ViT-Ti/16 at 224, float32, CPU ({res['finetune'][0]['threads']} torch threads), batch "
            f"{result['batch']}, steps 2 to {result['steps']} of each run, the 300 Fashion-MNIST training images "
            f"with the default augmentation; {result['rounds']} interleaved round(s), each variant a process of "
            "its own (benchmarks/finetune.py says what each runs).\n\n" + markdown(rows)
            + f"\n\nTargets: finetune >= 1.0x the timm loop: {vs_timm:.2f}x, {'met' if vs_timm >= 1.0 else 'NOT met'}; "
            f"finetune >= 0.9x ours alone (the data pipeline keeps up): {keeps_up:.2f}x, "
            f"{'met' if keeps_up >= 0.9 else 'NOT met'}. Model step alone, ours vs timm: "
            f"{ips['ours alone'] / ips['timm alone']:.2f}x.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.weights, args.steps, args.batch)))
        return
    print(f"machine: {machine()}")
    print(text(run(args.rounds, args.steps, args.batch)))


if __name__ == "__main__":
    main()
