"""A fine-tuning run interrupted and resumed, also by torchrun on 2 processes: each must end with the
weights of the plain run (CPU, same seed, same data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers.finetune import CLASSES, FASHION, small_tree

from vitconvert import VitConvertError, load_model
from vitconvert.inference.batches import prepare
from vitconvert.train import checkpoint
from vitconvert.train import finetune as finetune_module
from vitconvert.train.finetune import finetune

ROOT = Path(__file__).resolve().parents[2]
# 3 classes x 8 images, a quarter held out: 18 to train on, batches of 6, 3 steps an epoch, 3 epochs.
RUN = {"val_split": 0.25, "epochs": 3, "batch_size": 6, "lr": 0.1}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_tree(tmp_path_factory.mktemp("data") / "train", dict.fromkeys(CLASSES[:3], 8))


def interrupt_at(monkeypatch, step: int, error: BaseException) -> None:
    """Make the run raise `error` when it is about to take optimiser step `step` (0-based)."""
    real = finetune_module._Run._step

    def step_or_fail(self, *args):
        if self.step == step:
            raise error
        return real(self, *args)

    monkeypatch.setattr(finetune_module._Run, "_step", step_or_fail)


def same_tensors(a: Path, b: Path) -> bool:
    x, y = safetensors.torch.load_file(a), safetensors.torch.load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_an_interrupted_run_resumed_ends_with_the_weights_of_an_unbroken_one(tiny_parent, data, tmp_path, monkeypatch):
    unbroken = finetune(tiny_parent, data, tmp_path / "unbroken.safetensors", checkpoint_dir=tmp_path / "a", **RUN)
    interrupt_at(monkeypatch, 4, KeyboardInterrupt())  # Ctrl-C in the second epoch's second step
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_parent, data, tmp_path / "resumed.safetensors", checkpoint_dir=tmp_path / "b", **RUN)
    assert not (tmp_path / "resumed.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["last.pt"]  # no half-written file beside it
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 3  # the first epoch's end
    monkeypatch.undo()
    resumed = finetune(tiny_parent, data, tmp_path / "resumed.safetensors", checkpoint_dir=tmp_path / "b", resume=True,
                       **RUN)
    assert same_tensors(tmp_path / "unbroken.safetensors", tmp_path / "resumed.safetensors")  # bit for bit
    drop = lambda log: {k: v for k, v in log.to_dict().items() if k not in ("images_per_s", "seconds")}  # noqa: E731
    assert [drop(log) for log in resumed] == [drop(log) for log in unbroken]
    assert unbroken[-1].step == 9 and RUN["lr"] > unbroken[0].lr > unbroken[-1].lr > 0


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tiny_parent, data, tmp_path, monkeypatch):
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's checkpoint: some bytes, then the disk is full
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        finetune(tiny_parent, data, tmp_path / "out.safetensors", checkpoint_dir=tmp_path / "ckpt", **RUN)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.pt"]
    assert not (tmp_path / "out.safetensors").exists()
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize("options, message", [
    ({"resume": True}, "no checkpoint \\(last.pt\\) to resume from"),
    ({"resume": False, "seed_run": True}, "holds a checkpoint \\(last.pt\\) of an earlier run: pass --resume"),
    ({"resume": True, "seed_run": True, "lr": 0.05},
     "is from another run: lr 0.1 \\(checkpoint\\) vs 0.05 \\(now\\); resume with the same"),
])
def test_a_checkpoint_is_resumed_only_by_its_own_run(tiny_parent, data, tmp_path, options, message):
    options = dict(options)
    if options.pop("seed_run", False):
        finetune(tiny_parent, data, tmp_path / "first.safetensors", checkpoint_dir=tmp_path / "ckpt",
                 **{**RUN, "epochs": 1})
    with pytest.raises(VitConvertError, match=message):
        finetune(tiny_parent, data, tmp_path / "out.safetensors", checkpoint_dir=tmp_path / "ckpt",
                 **{**RUN, "epochs": 1, **options})
    assert not (tmp_path / "out.safetensors").exists()


def test_two_processes_under_torchrun_resume_a_one_process_run_and_give_its_weights(tiny_parent, data, tmp_path,
                                                                                   monkeypatch):
    """DDP on gloo: 2 CPU processes, each reading half of every batch of 6, continue a 1-process run
    stopped after its first epoch, and end where the unbroken 1-process run ends. With the default
    (random) augmentation: its draws are keyed by image and epoch, so the same crops reach the model."""
    options = {"steps": 8, "batch_size": 6, "lr": 0.1, "warmup_steps": 0}  # 4 steps an epoch
    finetune(tiny_parent, data, tmp_path / "one.safetensors", **options)
    interrupt_at(monkeypatch, 5, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_parent, data, tmp_path / "two.safetensors", checkpoint_dir=tmp_path / "ckpt", **options)
    args = ["--steps", "8", "--batch-size", "6", "--lr", "0.1", "--warmup-steps", "0", "--device", "cpu",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--resume"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    paths = [str(tiny_parent), str(data), str(tmp_path / "two.safetensors")]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "vitconvert", "finetune", *paths, *args],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-2000:]
    lines = two.stdout.splitlines()  # rank 0 alone prints: the second epoch's line, the summary
    assert len(lines) == 2 and lines[0].startswith("epoch   2  step      8") and lines[1].startswith("wrote ")
    one, two_ = load_model(tmp_path / "one.safetensors"), load_model(tmp_path / "two.safetensors")
    x = torch.stack([prepare(p, one.record.preprocess, 10**6) for p in sorted((FASHION / "val").glob("*/*.png"))[::5]])
    with torch.no_grad():
        a, b = one(x), two_(x)
    assert (a - b).abs().max().item() <= 1e-4  # the bound; observed 1.4e-7 (sums in another order)
    assert a.std().item() > 0.1  # the runs trained: logits spread 0.18
