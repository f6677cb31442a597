"""`vitconvert finetune` on the command line: what it prints, and on bad input one clear line on stderr
(exit 1, or 2 for usage) and never a file written, half or whole, under OUT."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import Result, vitconvert_cli
from helpers.faults import disk_full_after
from helpers.finetune import CLASSES, small_tree

from vitconvert.formats.weights_file import read_record
from vitconvert.train import finetune as finetune_module

QUICK = ["--steps", "1", "--batch-size", "4", "--augment", "none"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


@pytest.fixture
def data(tmp_path) -> Path:
    return small_tree(tmp_path / "train", dict.fromkeys(CLASSES[:2], 4))


def finetune_cli(capsys, *args) -> Result:
    return vitconvert_cli(capsys, "finetune", *args)


def fails(capsys, out: Path, *args, code: int = 1, trained: bool = False) -> str:
    """The one stderr line of a run that must fail (before training, unless `trained`), after checking
    that nothing is under `out` or beside it."""
    before = set(out.parent.iterdir()) if out.parent.is_dir() else set()
    got, stdout, err = finetune_cli(capsys, *args)
    assert got == code and (stdout != "") == trained, err
    err = err.lstrip("\n")  # after Ctrl-C, click ends the terminal's '^C' line first
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert set(out.parent.iterdir()) == before  # no OUT, no temporary file left beside it
    return err.strip()


def test_a_good_run_prints_a_line_per_epoch_and_what_it_wrote(capsys, tiny_parent, data, tmp_path):
    code, out, err = finetune_cli(capsys, tiny_parent, data, tmp_path / "o.safetensors", "--epochs", "2",
                                  "--batch-size", "4", "--val-split", "0.25")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["epoch", "1"], ["epoch", "2"]]
    assert "val loss" in lines[0] and "top-1" in lines[0] and "img/s" in lines[0]
    assert lines[2].startswith(f"wrote {tmp_path / 'o.safetensors'}: 2 classes (ankle_boot, bag), validation top-1 ")


def test_a_bar_per_epoch_with_the_loss_and_speed_on_a_terminal(capsys, tiny_parent, data, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    code, out, err = finetune_cli(capsys, tiny_parent, data, tmp_path / "o.safetensors", "--epochs", "2",
                                  "--batch-size", "4", "--augment", "none")
    drawn = [line.split("\r")[-1].rstrip() for line in err.split("\n")]  # each '\r' redraws the line
    assert code == 0 and len(drawn) == 3 and drawn[2] == ""
    for epoch, line in enumerate(drawn[:2], 1):  # each epoch's bar stays, full, above its line on stdout
        assert re.fullmatch(rf"epoch {epoch}/2 \[#{{24}}\] 100% 2/2 loss \d\.\d{{4}} \d+ img/s", line), line
    assert len(out.splitlines()) == 3


def test_json_prints_the_epoch_log_alone(capsys, tiny_parent, data, tmp_path):
    import json

    code, out, _ = finetune_cli(capsys, tiny_parent, data, tmp_path / "o.safetensors", "--epochs", "2", "--json",
                                *QUICK[2:])
    logs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [log["epoch"] for log in logs] == [1, 2] and logs[0]["val_top1"] is None
    assert set(logs[0]) == {"epoch", "step", "train_loss", "val_loss", "val_top1", "lr", "images_per_s", "seconds"}


def test_an_existing_out_is_kept_without_force(capsys, tiny_parent, data, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"mine")
    err = fails(capsys, out, tiny_parent, data, out, *QUICK)
    assert err == f"error: output {out} exists; pass --force to replace it"
    assert out.read_bytes() == b"mine"
    assert finetune_cli(capsys, tiny_parent, data, out, *QUICK, "--force")[0] == 0
    assert read_record(out).labels == tuple(CLASSES[:2])


def test_an_empty_folder(capsys, tiny_parent, tmp_path):
    (tmp_path / "empty").mkdir()
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, tmp_path / "empty", tmp_path / "o.safetensors", *QUICK)
    assert err.endswith("empty: no class folders; give a folder with one sub-folder of images per class (its name "
                        "is the class name), or a CSV file of path,label rows")


def test_a_single_class(capsys, tiny_parent, tmp_path):
    data = small_tree(tmp_path / "one", {"bag": 6})
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *QUICK)
    assert err == f"error: {data}: only one class ('bag'); a classifier needs at least 2 (one sub-folder of " \
                  "images per class, or two labels in the CSV)"


def test_a_class_with_no_images(capsys, tiny_parent, data, tmp_path):
    (data / "coat").mkdir()
    (data / "coat" / "notes.txt").write_text("no images here")
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *QUICK)
    assert err.startswith(f"error: class 'coat': {data / 'coat'}: directory has no image files (")


def test_unreadable_images_are_skipped_with_a_count_and_names_or_refused_with_strict(capsys, tiny_parent, data,
                                                                                    tmp_path):
    (data / "bag" / "broken.png").write_bytes(b"not a png")
    (data / "bag" / "empty.jpg").touch()
    out = tmp_path / "o.safetensors"
    err = fails(capsys, out, tiny_parent, data, out, *QUICK, "--strict")
    assert err.startswith(f"error: {data}: 2 of 10 images cannot be read: {data / 'bag' / 'broken.png'}: not an image")
    code, _, err = finetune_cli(capsys, tiny_parent, data, out, *QUICK)
    assert code == 0 and out.is_file()
    assert err.startswith(f"warning: {data}: skipped 2 of 10 images that cannot be read ({data / 'bag' / 'broken.png'}"
                          ": not an image file") and f"{data / 'bag' / 'empty.jpg'}: empty file" in err
    assert err.rstrip().endswith("; --strict makes this an error") and len(err.splitlines()) == 1
    assert read_record(out).source.training["train_images"] == 8


def test_a_class_whose_images_are_all_unreadable(capsys, tiny_parent, data, tmp_path):
    for image in (data / "bag").iterdir():
        image.write_bytes(b"garbage")
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *QUICK)
    assert err.startswith(f"error: {data}: class 'bag' has no readable images: {data / 'bag'}/")
    assert err.endswith("; and 1 more")  # 4 images: 3 named, 1 counted


def test_an_image_that_breaks_off_after_its_header_stops_the_run(capsys, tiny_parent, data, tmp_path):
    image = next((data / "bag").iterdir())
    image.write_bytes(image.read_bytes()[:60])  # a PNG cut inside its pixel data: the header still reads
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors",
                "--steps", "2", "--batch-size", "8", "--augment", "none")
    assert err.startswith(f"error: {image}: cannot decode image (") and "remove or replace it and run again" in err


def test_a_batch_larger_than_the_data(capsys, tiny_parent, data, tmp_path):
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", "--batch-size", "9")
    assert err == ("error: the batch size 9 is larger than the 8 training images; give a smaller --batch-size")


@pytest.mark.parametrize("kind", ["timm state dict in safetensors", "npz", "text"])
def test_weights_that_are_not_ours(capsys, data, tmp_path, kind):
    weights = tmp_path / "w.safetensors"
    if kind == "npz":
        weights = tmp_path / "w.npz"
        np.savez(weights, kernel=np.zeros(3))
    elif kind == "text":
        weights.write_text("hello")
    else:
        import safetensors.torch

        safetensors.torch.save_file({"head.weight": torch.zeros(2, 2)}, weights)
    err = fails(capsys, tmp_path / "o.safetensors", weights, data, tmp_path / "o.safetensors", *QUICK)
    # what the file is (formats/file_kind.py's words), and the command that makes it usable
    expected = {"npz": "is a NumPy .npz archive (a JAX checkpoint?), not a vitconvert weights file",
                "timm state dict in safetensors": "is a safetensors checkpoint (not converted by vitconvert), not a "
                                                  "vitconvert weights file", "text": "not a safetensors file"}[kind]
    assert err.startswith(f"error: {weights}") and expected in err
    assert (f"convert it first: vitconvert convert {weights} OUT.safetensors" in err) == (kind != "text")


def test_a_full_disk_while_writing_out(capsys, tiny_parent, data, tmp_path, monkeypatch):
    disk_full_after(monkeypatch, tensors=5)
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *QUICK, trained=True)
    assert err == "error: No space left on device"


def test_ctrl_c_leaves_no_out(capsys, tiny_parent, data, tmp_path, monkeypatch):
    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module._Run, "_step", interrupted)
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *QUICK, code=130)
    assert err == "error: interrupted"


def test_validation_classes_the_training_data_does_not_have(capsys, tiny_parent, data, tmp_path):
    val = small_tree(tmp_path / "val", {"bag": 2, "coat": 2}, split="val")
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *QUICK, "--val", val)
    assert err == f"error: {val}: classes the training data does not have: 'coat'"


def test_a_split_too_fine_for_a_class(capsys, tiny_parent, tmp_path):
    data = small_tree(tmp_path / "train", {"bag": 1, "coat": 5})
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *QUICK,
                "--val-split", "0.2")
    assert err == "error: class 'bag' has 1 image: too few to hold 0.2 of them out for validation and train on the rest"


@pytest.mark.parametrize("extra, message", [
    (["--val", "v", "--val-split", "0.1"],
     "error: give validation data (--val) or a validation split (--val-split), not both"),
    (["--epochs", "2"], "error: give the run's length as epochs or as steps, not both"),
    (["--res", "30"], "error: image size 30x30 is not a multiple of the patch stride 8"),
    (["--warmup-steps", "1"], "error: 1 warm-up steps leave none of the 1 steps of the run to train at the full "
                              "learning rate; give fewer --warmup-steps"),
])
def test_options_that_do_not_go_together(capsys, tiny_parent, data, tmp_path, extra, message):
    out = tmp_path / "o.safetensors"
    assert fails(capsys, out, tiny_parent, data, out, *QUICK, *extra) == message


@pytest.mark.parametrize("args, message", [
    (["--resume"], "--resume continues from --checkpoint-dir DIR; give it too"),
    (["--model", "augreg-B16-in21k-ft-in1k-384"], "give WEIGHTS DATA OUT, or --model NAME with DATA OUT"),
])
def test_usage_errors(capsys, tiny_parent, data, tmp_path, args, message):
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *args, code=2)
    assert err.startswith(f"error: {message}")


def test_plot_without_matplotlib_is_said_before_training(capsys, tiny_parent, data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    err = fails(capsys, tmp_path / "o.safetensors", tiny_parent, data, tmp_path / "o.safetensors", *QUICK,
                "--plot", tmp_path / "curves.png")
    assert err == "error: --plot needs matplotlib: pip install 'vitconvert[train]'"


def finetune_process(*args) -> subprocess.CompletedProcess:
    """`vitconvert finetune ARGS` in a fresh interpreter that then says whether it imported torch."""
    code = ("import sys\n"
            "from vitconvert.cli import main\n"
            "try:\n    main()\n"
            "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-c", code, "finetune", *map(str, args)], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)


@pytest.mark.parametrize("mistake", ["existing out", "missing data", "missing out directory", "out.txt",
                                     "plot directory"])
def test_path_mistakes_are_answered_before_torch_is_imported(tiny_parent, data, tmp_path, mistake):
    out, extra = tmp_path / "o.safetensors", []
    expected = {"existing out": f"error: output {out} exists; pass --force to replace it",
                "missing data": f"error: {tmp_path / 'nodata'}: no such folder or CSV file",
                "missing out directory": f"error: output directory {tmp_path / 'no'} does not exist",
                "out.txt": f"error: output {tmp_path / 'o.txt'}: the file written is safetensors; give a name "
                           "ending in .safetensors",
                "plot directory": f"error: --plot directory {tmp_path / 'no'} does not exist"}[mistake]
    if mistake == "existing out":
        out.write_bytes(b"mine")
    elif mistake == "missing data":
        data = tmp_path / "nodata"
    elif mistake == "missing out directory":
        out = tmp_path / "no" / "o.safetensors"
    elif mistake == "out.txt":
        out = tmp_path / "o.txt"
    else:
        extra = ["--plot", tmp_path / "no" / "curves.png"]
    proc = finetune_process(tiny_parent, data, out, *QUICK, *extra)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [expected, "torch imported: False"]


def test_the_bar_is_drawn_on_a_terminal_stderr_with_json_on_stdout(capsys, tiny_parent, data, tmp_path, monkeypatch):
    import json

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    code, out, err = finetune_cli(capsys, tiny_parent, data, tmp_path / "o.safetensors", "--epochs", "1", "--json",
                                  *QUICK[2:])
    assert code == 0 and re.search(r"epoch 1/1 \[#{24}\] 100% 2/2 loss", err)
    assert [json.loads(line)["epoch"] for line in out.splitlines()] == [1]


def test_help_shows_percent_signs_once(capsys):
    code, out, _ = finetune_cli(capsys, "--help")
    assert code == 0 and "5-100% of the image" in " ".join(out.split()) and "%%" not in out
