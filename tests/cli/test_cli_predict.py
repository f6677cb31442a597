"""`vitpredict`: what it prints, what it writes, and how it fails.

Most tests run the click command in this process (fast); a few start a real process to check
start-up: no timm ever, no torch before the arguments are checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.vit_weights import TINY, our_vit, write_test_weights
from PIL import Image

from vitconvert.cli import predict as predict_cli
from vitconvert.core.errors import VitConvertError

ROOT = Path(__file__).resolve().parents[2]


def test_table_per_image(vitpredict, tiny_weights, cat_jpg):
    result = vitpredict(cat_jpg, "--weights", tiny_weights, "--top", "3")
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0] == str(cat_jpg)
    assert lines[1].split() == ["rank", "prob", "label"]
    rows = lines[2:5]
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    percents = [float(row.split()[1].rstrip("%")) for row in rows]
    assert percents == sorted(percents, reverse=True) and 0 < percents[0] <= 100
    # The table and --json say the same thing.
    top = vitpredict(cat_jpg, "--weights", tiny_weights, "--top", "3", "--json").json()[0]["predictions"]
    assert percents == [round(p["probability"] * 100, 2) for p in top]
    assert [row.split(None, 2)[2] for row in rows] == [p["label"] for p in top]


def test_json_schema(vitpredict, tiny_weights, cat_jpg, gray_png):
    result = vitpredict(cat_jpg, gray_png, "--weights", tiny_weights, "--json", "--top", "4")
    assert result.code == 0
    entries = result.json()
    assert [e["image"] for e in entries] == [str(cat_jpg), str(gray_png)]
    for entry in entries:
        assert set(entry) == {"image", "predictions"}
        preds = entry["predictions"]
        assert [p["rank"] for p in preds] == [1, 2, 3, 4]
        for p in preds:
            assert set(p) == {"rank", "index", "label", "probability"}
            assert isinstance(p["index"], int) and 0 <= p["index"] < 1000
            assert isinstance(p["label"], str) and isinstance(p["probability"], float)
            assert 0 < p["probability"] < 1
        assert [p["probability"] for p in preds] == sorted((p["probability"] for p in preds), reverse=True)


def test_imagenet_labels_are_timm_lemmas(vitpredict, tiny_weights, cat_jpg):
    from vitconvert.inference.labels import builtin_labels

    names = builtin_labels("imagenet-1k")
    for p in vitpredict(cat_jpg, "--weights", tiny_weights, "--json").json()[0]["predictions"]:
        assert p["label"] == names[p["index"]]


def test_directories_and_batches(vitpredict, tiny_weights, cat_jpg, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ["b.jpg", "a.png", "c.webp"]:
        Image.open(cat_jpg).save(folder / name)
    (folder / "readme.txt").write_text("not an image")
    by_one = vitpredict(folder, cat_jpg, "--weights", tiny_weights, "--json", "--batch-size", "1").json()
    by_four = vitpredict(folder, cat_jpg, "--weights", tiny_weights, "--json", "--batch-size", "4").json()
    assert [e["image"] for e in by_one] == [str(folder / n) for n in ("a.png", "b.jpg", "c.webp")] + [str(cat_jpg)]
    for a, b in zip(by_one, by_four, strict=False):  # another batch size, other kernels: measured <= 2.4e-7
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        assert [p["probability"] for p in a["predictions"]] == pytest.approx(
            [p["probability"] for p in b["predictions"]], abs=1e-6)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_every_image_mode_classifies(vitpredict, tiny_weights, tmp_path, mode):
    path = tmp_path / ("im.tiff" if mode in ("CMYK", "I;16") else "im.png")
    Image.new(mode, (40, 30)).save(path)
    result = vitpredict(path, "--weights", tiny_weights, "--json", "--top", "1")
    assert result.code == 0, result.err
    assert result.json()[0]["predictions"][0]["rank"] == 1


def test_one_pixel_image(vitpredict, tiny_weights, tmp_path):
    Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "dot.png")
    result = vitpredict(tmp_path / "dot.png", "--weights", tiny_weights, "--json")
    assert result.code == 0 and len(result.json()[0]["predictions"]) == 5


def test_label_file(vitpredict, tmp_path, cat_jpg):
    config = TINY.replace(num_classes=4)
    path = write_test_weights(tmp_path / "four.safetensors", our_vit(config).state_dict(), config, labels=None)
    indices = vitpredict(cat_jpg, "--weights", path, "--json").json()[0]["predictions"]
    assert sorted(p["index"] for p in indices) == [0, 1, 2, 3] and all(p["label"] is None for p in indices)
    table = vitpredict(cat_jpg, "--weights", path).out.splitlines()
    assert sorted(row.split()[2] for row in table[2:6]) == ["0", "1", "2", "3"]  # indices shown
    names = tmp_path / "names.txt"
    names.write_text("ant\nbee\ncat\ndog\n")
    named = vitpredict(cat_jpg, "--weights", path, "--labels", names, "--json").json()[0]["predictions"]
    assert [p["label"] for p in named] == [["ant", "bee", "cat", "dog"][p["index"]] for p in named]
    names.write_text("ant\nbee\n")
    wrong = vitpredict(cat_jpg, "--weights", path, "--labels", names)
    assert wrong.code == 1 and "has 2 names but the model has 4 classes" in wrong.err


def test_res_runs_the_model_at_that_size(vitpredict, tiny_weights, cat_jpg):
    result = vitpredict(cat_jpg, "--weights", tiny_weights, "--res", "160x256", "--json")
    assert result.code == 0
    bad = vitpredict(cat_jpg, "--weights", tiny_weights, "--res", "200")
    assert bad.code == 1
    # the model's own check (ViTConfig.input_grid), made before torch is imported
    assert bad.err == "error: image size 200x200 is not a multiple of the patch stride 16; the nearest sizes " \
                      "that tile are 192x192 and 208x208\n"


# --- attention maps ---------------------------------------------------------------------------

def test_attention_map_has_the_image_size(vitpredict, tiny_weights, cat_jpg, tmp_path):
    out = tmp_path / "attn.png"
    result = vitpredict(cat_jpg, "--weights", tiny_weights, "--attention-map", out, "--json")
    assert result.code == 0
    assert result.json()[0]["attention_map"] == str(out)
    with Image.open(out) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (451, 300))


def test_attention_maps_for_several_images_are_named_by_image(vitpredict, tiny_weights, cat_jpg, gray_png,
                                                              tmp_path):
    out = tmp_path / "attn.png"
    assert vitpredict(cat_jpg, gray_png, "--weights", tiny_weights, "--attention-map", out).code == 0
    with Image.open(tmp_path / "attn-cat.png") as a, Image.open(tmp_path / "attn-camera_gray.png") as b:
        assert (a.size, b.size) == ((451, 300), (128, 128))


def test_attention_map_names_stay_unique(tmp_path):
    images = [Path("a/cat.jpg"), Path("b/cat.png"), Path("dog.jpg")]
    assert predict_cli.attention_paths(tmp_path / "m.png", images, force=False) == [
        tmp_path / "m-cat-1.png", tmp_path / "m-cat-2.png", tmp_path / "m-dog.png"]
    with pytest.raises(VitConvertError, match="^--attention-map directory .*nowhere does not exist"):
        predict_cli.attention_paths(tmp_path / "nowhere" / "m.png", images, force=False)


def test_attention_map_of_a_gap_model_is_refused_before_predicting(vitpredict, tmp_path, cat_jpg):
    config = TINY.replace(pool="gap", num_classes=10, depth=1)
    path = write_test_weights(tmp_path / "gap.safetensors", our_vit(config).state_dict(), config, labels=None)
    result = vitpredict(cat_jpg, "--weights", path, "--attention-map", tmp_path / "a.png")
    assert result.code == 1 and result.out == ""
    assert "attention maps need a class token" in result.err


# --- weights -----------------------------------------------------------------------------------

def test_weights_from_the_environment(vitpredict, tiny_weights, cat_jpg, monkeypatch):
    monkeypatch.setenv("VITCONVERT_WEIGHTS", str(tiny_weights))
    assert vitpredict(cat_jpg, "--json").code == 0


def test_no_weights_says_how_to_get_some(vitpredict, cat_jpg):
    result = vitpredict(cat_jpg)
    assert result.code == 1 and result.err.count("\n") == 1
    for hint in ("--weights FILE", "$VITCONVERT_WEIGHTS", "vitconvert jax2torch IN.npz OUT.safetensors",
                 "vitconvert timm2torch", "vitconvert download NAME"):
        assert hint in result.err


def test_model_from_the_cache(vitpredict, tiny_weights, cat_jpg, tmp_path, monkeypatch):
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path))
    known = "augreg-Ti16-in21k-ft-in1k-224"  # in the bundled manifest
    missing = vitpredict(cat_jpg, "--model", known)
    assert missing.code == 1
    assert missing.err == (f"error: model '{known}' is not in the cache ({tmp_path / (known + '.safetensors')}); "
                           f"run `vitconvert download {known}` first\n")
    (tmp_path / "vit-tiny.safetensors").write_bytes(tiny_weights.read_bytes())
    assert vitpredict(cat_jpg, "--model", "vit-tiny", "--json").code == 0


def test_zero_head_refusal(vitpredict, tmp_path, cat_jpg):
    state = {**our_vit(TINY).state_dict(), "head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)}
    path = write_test_weights(tmp_path / "z.safetensors", state, TINY)
    result = vitpredict(cat_jpg, "--weights", path)
    assert result.code == 1 and result.out == ""
    assert "published for fine-tuning only" in result.err


# --- errors and exit codes ---------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("hello"), "not an image file vitpredict can read"),
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: None, "no such file"),
])
def test_bad_image_is_one_error_line_naming_it(vitpredict, tiny_weights, tmp_path, make, message):
    bad = tmp_path / "bad.jpg"
    make(bad)
    result = vitpredict(bad, "--weights", tiny_weights)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith(f"error: {bad}: ") and message in result.err
    assert result.err.count("\n") == 1


def test_decompression_bomb_is_an_error(vitpredict, tiny_weights, tmp_path):
    from helpers.images import png_header

    bomb = png_header(tmp_path / "bomb.png", 12_000, 12_000)
    result = vitpredict(bomb, "--weights", tiny_weights)
    assert result.code == 1 and "possible decompression bomb" in result.err and str(bomb) in result.err


@pytest.mark.parametrize("args", [
    [],                                   # no image
    ["x.jpg", "--top", "0"],
    ["x.jpg", "--batch-size", "-1"],
    ["x.jpg", "--res", "big"],
    ["x.jpg", "--no-such-option"],
    ["x.jpg", "--weights", "w.safetensors", "--model", "m"],
    ["x.jpg", "--verbose"],
])
def test_usage_errors_exit_2(vitpredict, args):
    result = vitpredict(*args)
    assert result.code == 2
    assert result.err.startswith("error: ") and "--help" in result.err and result.err.count("\n") == 1


def test_progress_bar_only_for_a_terminal(vitpredict, tiny_weights, cat_jpg, monkeypatch):
    images = [cat_jpg] * predict_cli.PROGRESS_MIN_IMAGES
    quiet = vitpredict(*images, "--weights", tiny_weights, "--batch-size", "4")
    assert quiet.err == ""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = vitpredict(*images, "--weights", tiny_weights, "--batch-size", "4")
    assert "classifying" in shown.err
    assert shown.out == quiet.out  # the same tables, printed after the bar


# --- start-up, in real processes ---------------------------------------------------------------

def run_process(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    """`vitpredict ARGS` in a fresh interpreter that then reports which heavy modules it imported."""
    code = ("import sys\n"
            "from vitconvert.cli.predict import main\n"
            "try:\n    main()\n"
            "finally:\n"
            "    print('imported:', *sorted(m for m in ('torch', 'torch._dynamo', 'timm', 'torchvision')"
            " if m in sys.modules),"
            " file=sys.stderr)\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=120)


def test_process_run_never_imports_timm(tiny_weights, cat_jpg):
    proc = run_process(cat_jpg, "--weights", tiny_weights, "--top", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1] == "imported: torch"
    assert proc.stdout.startswith(str(cat_jpg))


def test_a_plain_predict_never_imports_torchs_compiler(tiny_weights, cat_jpg):
    """torch._dynamo is seconds of a cold start; only --compile on a GPU (torch.compile) may need it."""
    proc = run_process(cat_jpg, "--weights", tiny_weights, "--top", "1")
    assert proc.returncode == 0, proc.stderr
    assert "torch._dynamo" not in proc.stderr.splitlines()[-1].split()


def test_a_missing_labels_file_is_refused_before_torch_is_imported(tiny_weights, cat_jpg, tmp_path):
    proc = run_process(cat_jpg, "--weights", tiny_weights, "--labels", tmp_path / "missing.txt")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: labels file {tmp_path / 'missing.txt'}: no such file", "imported:"]


@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["missing.jpg", "--weights", "w.safetensors"], 1),
    (["--top", "0", "x.jpg"], 2),
])
def test_arguments_are_checked_before_torch_is_imported(args, code, tmp_path):
    proc = run_process(*args)
    assert proc.returncode == code
    assert proc.stderr.splitlines()[-1] == "imported:"
    if code == 1:
        assert proc.stderr.splitlines()[0] == "error: missing.jpg: no such file"


# --- one bad image among many ------------------------------------------------------------------

BAD = {  # how the file is broken -> what its error line says
    "not an image": (lambda bad, good: bad.write_text("hello"), "not an image file vitpredict can read"),
    # the header reads, so this one is found while decoding, after the model has loaded
    "truncated": (lambda bad, good: bad.write_bytes(good.read_bytes()[:2000]), "cannot decode image"),
    "missing": (lambda bad, good: None, "no such file"),
}


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("kind", BAD)
def test_a_bad_image_costs_only_itself(vitpredict, tiny_weights, cat_jpg, gray_png, tmp_path, kind, batch_size):
    make, message = BAD[kind]
    bad = tmp_path / "bad.jpg"
    make(bad, cat_jpg)
    images = [cat_jpg, bad, gray_png]
    alone = vitpredict(cat_jpg, gray_png, "--weights", tiny_weights, "--json").json()
    result = vitpredict(*images, "--weights", tiny_weights, "--json", "--batch-size", batch_size)
    assert result.code == 1
    assert result.err.startswith(f"error: {bad}: ") and message in result.err and result.err.count("\n") == 1
    entries = result.json()
    assert [e["image"] for e in entries] == [str(p) for p in images]
    assert entries[1] == {"image": str(bad), "error": result.err[len("error: "):-1]}
    for got, want in zip([entries[0], entries[2]], alone, strict=False):
        assert [p["index"] for p in got["predictions"]] == [p["index"] for p in want["predictions"]]
        # batches of other sizes round differently: observed <= 3.6e-7
        assert [p["probability"] for p in got["predictions"]] == pytest.approx(
            [p["probability"] for p in want["predictions"]], abs=1e-6)
    tables = vitpredict(*images, "--weights", tiny_weights, "--batch-size", batch_size)
    assert tables.code == 1 and tables.err == result.err
    assert [ln for ln in tables.out.splitlines() if ln and not ln.startswith(" ")] == [str(cat_jpg), str(gray_png)]
    skipped = vitpredict(*images, "--weights", tiny_weights, "--batch-size", batch_size, "--skip-errors")
    assert (skipped.code, skipped.out, skipped.err) == (0, tables.out, tables.err)


def test_every_bad_image_is_reported_and_nothing_loads_when_none_is_good(vitpredict, tiny_weights, tmp_path):
    bad = [tmp_path / "a.jpg", tmp_path / "b.png"]
    for path in bad:
        path.write_text("hello")
    result = vitpredict(*bad, "--weights", tiny_weights, "--json")
    assert result.code == 1
    assert [line.split(": ")[1] for line in result.err.splitlines()] == [str(p) for p in bad]
    assert [set(e) for e in result.json()] == [{"image", "error"}] * 2
    assert vitpredict(*bad, "--weights", tiny_weights, "--skip-errors").code == 0


def test_bad_images_under_workers(vitpredict, tiny_weights, cat_jpg, gray_png, tmp_path):
    """The worker processes' path: a bad image mid-batch, and a batch with nothing good in it."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(cat_jpg.read_bytes()[:2000])  # the header reads: decoding fails, in the workers
    images = [cat_jpg, broken, gray_png, broken, broken, cat_jpg]
    serial = vitpredict(*images, "--weights", tiny_weights, "--json", "--batch-size", "2", "--workers", "0")
    workers = vitpredict(*images, "--weights", tiny_weights, "--json", "--batch-size", "2", "--workers", "2")
    assert serial.code == workers.code == 1
    assert serial.out == workers.out and serial.err == workers.err and serial.err.count("\n") == 3
    assert ["error" in e for e in workers.json()] == [False, True, False, True, True, False]


def test_directories_say_what_they_skipped_and_recursive_searches_sub_folders(vitpredict, tiny_weights,
                                                                              cat_jpg, tmp_path):
    folder = tmp_path / "photos"
    (folder / "2024").mkdir(parents=True)
    Image.open(cat_jpg).save(folder / "a.png")
    Image.open(cat_jpg).save(folder / "2024" / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    flat = vitpredict(folder, "--weights", tiny_weights, "--json")
    assert flat.code == 0
    assert [e["image"] for e in flat.json()] == [str(folder / "a.png")]
    assert flat.err == (f"note: skipped 1 sub-folder and 1 non-image file ({folder / 'notes.txt'}) "
                        "(--recursive searches sub-folders)\n")
    deep = vitpredict(folder, "--weights", tiny_weights, "--json", "--recursive")
    assert [e["image"] for e in deep.json()] == [str(folder / "2024" / "b.jpg"), str(folder / "a.png")]
    assert deep.err == f"note: skipped 1 non-image file ({folder / 'notes.txt'})\n"
    (folder / "a.png").unlink()
    nothing = vitpredict(folder, "--weights", tiny_weights)
    assert nothing.code == 1 and nothing.err == (
        f"error: {folder}: directory has no image files (.bmp, .dib, .gif, .jpe, .jpeg, .jpg, .png, .tif, .tiff, "
        ".webp); 1 sub-folder not searched (--recursive)\n")


def test_progress_goes_to_a_terminal_stderr_whatever_stdout_is(vitpredict, tiny_weights, cat_jpg, monkeypatch):
    """`vitpredict DIR --json > out.json` on a terminal: the bar on stderr, the JSON alone on stdout."""
    images = [cat_jpg] * predict_cli.PROGRESS_MIN_IMAGES
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = vitpredict(*images, "--weights", tiny_weights, "--batch-size", "4", "--json")
    assert shown.code == 0 and "classifying [" in shown.err and f"{len(images)}/{len(images)}" in shown.err
    assert len(shown.json()) == len(images)


@pytest.mark.parametrize("option", ["--embed", "--attention-map"])
def test_an_existing_output_is_replaced_only_with_force(vitpredict, tiny_weights, cat_jpg, tmp_path, option):
    out = tmp_path / ("e.npz" if option == "--embed" else "a.png")
    out.write_bytes(b"mine")
    refused = vitpredict(cat_jpg, "--weights", tiny_weights, option, out)
    assert refused.code == 1 and refused.out == ""
    assert refused.err == f"error: {option} {out} exists; pass --force to replace it\n"
    assert out.read_bytes() == b"mine"
    forced = vitpredict(cat_jpg, "--weights", tiny_weights, option, out, "--force")
    assert forced.code == 0 and out.read_bytes() != b"mine"


@pytest.mark.parametrize("option, name, expected", [
    ("--embed", "e.txt", ".npz"), ("--embed", "features", ".npz"), ("--attention-map", "a.jpg", ".png"),
])
def test_an_output_named_for_another_format_is_refused_naming_the_expected_one(vitpredict, tiny_weights, cat_jpg,
                                                                               tmp_path, option, name, expected):
    result = vitpredict(cat_jpg, "--weights", tiny_weights, option, tmp_path / name)
    assert result.code == 1 and result.err.count("\n") == 1
    assert result.err.startswith(f"error: {option} {tmp_path / name}: ") and f"ending in {expected}" in result.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["npz", "pth"])
def test_a_raw_checkpoint_as_weights_says_what_it_is_and_how_to_convert_it(vitpredict, cat_jpg, tmp_path, kind):
    import numpy as np

    raw = tmp_path / f"raw.{kind}"
    if kind == "npz":
        np.savez(raw, kernel=np.zeros(3, np.float32))
        what = "a NumPy .npz archive"
    else:
        torch.save({"head.weight": torch.zeros(2, 2)}, raw)
        what = "a PyTorch checkpoint (torch.save's zip format)"
    result = vitpredict(cat_jpg, "--weights", raw)
    assert result.code == 1
    assert result.err.startswith(f"error: {raw} is {what}") and "header too large" not in result.err
    assert result.err.endswith(f"convert it first: vitconvert convert {raw} OUT.safetensors\n")


def test_a_mistyped_model_name_suggests_the_closest(vitpredict, cat_jpg, tmp_path, monkeypatch):
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path))
    result = vitpredict(cat_jpg, "--model", "augreg-B16-in21k-ft-in1k-38")
    assert result.code == 1 and "did you mean augreg-B16-in21k-ft-in1k-384" in result.err
    assert "vitconvert download augreg-B16-in21k-ft-in1k-38`" not in result.err


@pytest.mark.parametrize("extra", [[], ["--embed", "e.npz"], ["--attention-map", "a.png"]])
def test_the_weights_record_is_read_once(vitpredict, tiny_weights, cat_jpg, tmp_path, monkeypatch, extra):
    from vitconvert.formats.weights_file import WeightsRecord

    parsed = []
    original = WeightsRecord.from_json.__func__
    monkeypatch.setattr(WeightsRecord, "from_json",
                        classmethod(lambda cls, *a, **k: parsed.append(a) or original(cls, *a, **k)))
    monkeypatch.chdir(tmp_path)
    result = vitpredict(cat_jpg, "--weights", tiny_weights, *extra)
    assert result.code == 0, result.err
    assert len(parsed) == 1


def test_a_plan_is_not_given_the_options_it_decided(tiny_weights):
    from vitconvert.inference.plan import plan_prediction
    from vitconvert.inference.predictor import Predictor

    plan = plan_prediction(tiny_weights, img_size=96)
    assert Predictor(plan).config.img_size == (96, 96)
    with pytest.raises(VitConvertError, match="decided model, img_size, patch_size and labels already"):
        Predictor(plan, img_size=128)


def test_compile_help_quotes_no_speed_up_and_points_to_the_speed_section(vitpredict):
    import re

    help_text = " ".join(vitpredict("--help").out.split())
    compile_help = help_text.split("--compile", 1)[1].split("--workers", 1)[0]
    assert "docs/speed.md" in compile_help
    assert not re.search(r"\d(\.\d+)?x", compile_help)  # figures live in docs/speed.md and benchmarks/RESULTS.md
