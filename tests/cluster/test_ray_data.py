"""Batch inference on Ray Data gives what `vitpredict` gives, row for row, on a local Ray.

One local Ray (2 CPUs) serves every test here and starts only when one of them runs, so the rest
of the suite pays nothing for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray Data is the optional extra vitconvert[ray]")
pq = pytest.importorskip("pyarrow.parquet")

from helpers.timm_reference import timm_vit  # noqa: E402
from helpers.vit_weights import TINY, TINY_TIMM_KWARGS, timm_classifier, write_test_weights  # noqa: E402

from vitconvert import Predictor  # noqa: E402
from vitconvert.inference.images import load_rgb  # noqa: E402

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    model = timm_classifier("vit_base_patch16_224", **TINY_TIMM_KWARGS)
    return write_test_weights(tmp_path_factory.mktemp("ray") / "w.safetensors", model.state_dict(), TINY)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The sample photos, a few copies (so batches mix), and a file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(3):
        shutil.copy(DATA / "cat.jpg", root / f"cat{i}.jpg")
        shutil.copy(DATA / "camera_gray.png", root / f"camera{i}.png")
    (root / "broken.jpg").write_bytes((DATA / "cat.jpg").read_bytes()[:500])
    return root


def rows_by_path(dataset) -> list[dict]:
    return sorted(dataset.take_all(), key=lambda row: row["path"])


def test_rows_are_serial_vitpredicts_predictions(local_ray, weights, folder) -> None:
    from vitconvert.cluster import predict_dataset

    paths = sorted(str(p) for p in folder.iterdir())
    rows = rows_by_path(predict_dataset(paths, weights, top_k=5, batch_size=4))
    serial = Predictor(weights).predict(paths, top_k=5, batch_size=16, errors="report")
    assert [row["path"] for row in rows] == [r.image for r in serial]
    for row, ref in zip(rows, serial, strict=False):
        if ref.error:
            assert row["error"] == ref.error and list(row["index"]) == [] and list(row["probability"]) == []
            continue
        assert row["error"] == ""
        assert list(row["index"]) == [p.index for p in ref.predictions]
        assert list(row["label"]) == [p.label for p in ref.predictions]
        # Batches of another make-up round differently: observed 4.2e-7.
        assert np.abs(np.array(row["probability"]) - [p.probability for p in ref.predictions]).max() <= 1e-6
    assert sum(1 for row in rows if row["error"]) == 1 and "broken.jpg" in rows[0]["error"]


def test_embeddings_are_the_pooled_features_timm_computes(local_ray, weights, folder) -> None:
    from vitconvert.cluster import predict_dataset

    paths = sorted(str(p) for p in folder.glob("c*"))
    rows = rows_by_path(predict_dataset(paths, weights, embed=True, batch_size=4))
    reference = timm_vit("vit_base_patch16_224", **TINY_TIMM_KWARGS)
    reference.load_state_dict(Predictor(weights).model.state_dict())
    x = torch.stack([Predictor(weights).transform(p) for p in paths])
    with torch.inference_mode():
        theirs = reference.forward_head(reference.forward_features(x), pre_logits=True).numpy()
    ours = np.stack([np.asarray(row["embedding"], np.float32) for row in rows])
    assert ours.shape == (len(paths), TINY.embed_dim)
    assert np.abs(ours - theirs).max() <= 5e-6  # observed 7.2e-7


def test_a_dataset_of_decoded_images_gives_the_same_rows(local_ray, weights) -> None:
    from vitconvert.cluster import predict_dataset

    paths = [str(DATA / "cat.jpg"), str(DATA / "camera_gray.png")]
    items = [{"path": p, "image": np.asarray(load_rgb(p))} for p in paths]
    from_arrays = rows_by_path(predict_dataset(ray.data.from_items(items), weights, top_k=3))
    from_files = rows_by_path(predict_dataset(paths, weights, top_k=3))
    for a, b in zip(from_arrays, from_files, strict=False):
        assert list(a["index"]) == list(b["index"]) and a["error"] == b["error"] == ""
        assert np.abs(np.array(a["probability"]) - np.array(b["probability"])).max() <= 1e-6


def test_vitpredict_ray_writes_one_parquet_table_and_counts_errors(local_ray, weights, folder, tmp_path,
                                                                   capsys) -> None:
    from vitconvert.cli.errors import run
    from vitconvert.cli.predict import command

    out = tmp_path / "p.parquet"
    with pytest.raises(SystemExit) as failed:  # one unreadable image: reported, exit 1
        run(command, [str(folder), "--weights", str(weights), "--ray", "--output", str(out), "--embed", "--json"])
    assert failed.value.code == 1
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert {k: summary[k] for k in ("output", "images", "errors")} == {"output": str(out), "images": 7, "errors": 1}
    assert [f["image"] for f in summary["failed"]] == [str(folder / "broken.jpg")]
    # each unreadable image named on stderr, as the serial path names it (pytest shows Ray's deprecation
    # warnings too, which a plain run does not: the quiet test below checks a real process)
    assert [line for line in printed.err.splitlines() if line.startswith("error: ")] == [
        f"error: {summary['failed'][0]['error']}"]
    assert summary["failed"][0]["error"].startswith(f"{folder / 'broken.jpg'}: ")
    table = pq.read_table(out).to_pandas().sort_values("path")
    assert list(table.columns) == ["path", "index", "label", "probability", "error", "embedding"]
    assert [len(e) for e in table["embedding"]] == [0] + [TINY.embed_dim] * 6  # broken.jpg sorts first
    run(command, [str(folder), "--weights", str(weights), "--ray", "--output", str(out), "--force",
                  "--skip-errors", "--top", "2"])
    assert "7 images, 1 unreadable" in capsys.readouterr().out
    assert {len(i) for i in pq.read_table(out).column("index").to_pylist()} == {0, 2}


def test_an_existing_output_is_refused_before_any_work(weights, folder, tmp_path, capsys) -> None:
    from vitconvert.cli.errors import run
    from vitconvert.cli.predict import command

    (tmp_path / "p.parquet").mkdir()
    with pytest.raises(SystemExit) as failed:
        run(command, [str(folder), "--weights", str(weights), "--ray", "--output", str(tmp_path / "p.parquet")])
    assert failed.value.code == 1 and "exists; pass --force" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        run(command, [str(folder), "--weights", str(weights), "--ray"])
    assert usage.value.code == 2


def test_force_replaces_an_earlier_table_but_not_a_folder_holding_other_files(local_ray, tmp_path) -> None:
    """--force with a mistyped path must not delete somebody's folder: only Parquet files are replaceable."""
    import ray.data

    from vitconvert import VitConvertError
    from vitconvert.cluster import write_predictions

    rows = ray.data.from_items([{"path": "a.jpg", "error": ""}, {"path": "b.jpg", "error": "unreadable"}])
    out = tmp_path / "p.parquet"
    failed = [{"image": "b.jpg", "error": "unreadable"}]
    assert write_predictions(rows, out) == {"images": 2, "errors": 1, "failed": failed}
    assert write_predictions(rows, out, force=True) == {"images": 2, "errors": 1, "failed": failed}  # an earlier
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"mine")
    with pytest.raises(VitConvertError, match="holds other files than the ones written here .*cat.jpg"):
        write_predictions(rows, photos, force=True)
    assert [p.name for p in photos.iterdir()] == ["cat.jpg"] and (photos / "cat.jpg").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.parquet", "photos"]  # no temporary left


def test_a_model_without_classes_to_rank_gives_embeddings_only(local_ray, weights, tmp_path) -> None:
    from vitconvert import VitConvertError, load_model
    from vitconvert.cluster import predict_dataset

    state = load_model(weights).state_dict()
    state["head.weight"].zero_()
    state["head.bias"].zero_()
    zero = write_test_weights(tmp_path / "zero.safetensors", state, TINY)
    with pytest.raises(VitConvertError, match="all zeros.*--embed"):
        predict_dataset([str(DATA / "cat.jpg")], zero)
    (row,) = predict_dataset([str(DATA / "cat.jpg")], zero, embed=True).take_all()
    assert list(row["index"]) == [] and row["error"] == "" and len(row["embedding"]) == TINY.embed_dim


def test_replicas_leave_a_cpu_for_reading_or_are_refused(local_ray, weights) -> None:
    """Two 1-CPU replicas on a 2-CPU Ray would starve the read tasks forever (seen: a hang)."""
    from vitconvert import VitConvertError
    from vitconvert.cluster import predict_dataset

    paths = [str(DATA / "cat.jpg"), str(DATA / "camera_gray.png")] * 3
    with pytest.raises(VitConvertError, match=r"2 replica\(s\) of 1 CPU each leave no CPU for reading .*\(2 CPUs\)"):
        predict_dataset(paths, weights, replicas=2)
    shared = rows_by_path(predict_dataset(paths, weights, replicas=2, cpus_per_replica=0.5, batch_size=2))
    alone = rows_by_path(predict_dataset(paths, weights, batch_size=2))
    assert [list(r["index"]) for r in shared] == [list(r["index"]) for r in alone]


def test_vitpredict_ray_starts_a_quiet_ray_unless_verbose(weights, tmp_path, capfd) -> None:
    """Ray started by vitpredict itself, in a process of its own: none of Ray's INFO or WARNING lines."""
    import os
    import subprocess
    import sys

    out = tmp_path / "p.parquet"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "vitconvert.cli.predict", str(DATA / "cat.jpg"), "--weights",
                           str(weights), "--ray", "--output", str(out), "--cpus-per-replica", "0.5"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {out}: 1 images, 0 unreadable\n"
    # At most the C++ core's own line (core_worker.cc), none of Ray's Python INFO or WARNING lines
    python_lines = [line for line in proc.stderr.splitlines() if ".cc:" not in line]
    assert python_lines == [], proc.stderr
    verbose = subprocess.run([*proc.args, "--force", "--verbose"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(root)})
    # Ray's own lines, when asked for (which of them, INFO or WARNING, depends on the machine: both are Ray's)
    assert verbose.returncode == 0 and "Started a local Ray instance" in verbose.stderr, verbose.stderr
