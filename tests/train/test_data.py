"""What `finetune` trains on: the classes of a folder tree or a CSV, the validation split, the order of the
images in each global batch and each process's share of it, and the training crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.finetune import CLASSES, FASHION
from PIL import Image

from vitconvert.formats.weights_file import Preprocess
from vitconvert.inference.images import load_rgb
from vitconvert.inference.transform import to_tensor
from vitconvert.train.augment import augmented, crop_box
from vitconvert.train.data import Images, Schedule, read_labelled, split


def test_a_folder_tree_gives_sorted_class_names_and_every_image():
    data = read_labelled(FASHION / "train")
    assert list(data.classes) == sorted(CLASSES) and len(CLASSES) == 10
    assert data.counts() == [30] * 10
    assert all(data.classes[y] == p.parent.name for p, y in zip(data.paths, data.labels, strict=True))


@pytest.mark.parametrize("header", [True, False], ids=["with header", "without header"])
def test_a_csv_of_path_label_rows_is_the_same_data(tmp_path, header):
    folder = read_labelled(FASHION / "val")
    (tmp_path / "val").symlink_to(FASHION / "val")
    # Paths relative to the CSV file's folder, or absolute; rows in any order; blank lines skipped.
    rows = [f"{p.relative_to(FASHION)},{p.parent.name}" for p in folder.paths[:50]]
    rows += [f"{p},{p.parent.name}" for p in folder.paths[50:]]
    csv = tmp_path / "val.csv"
    csv.write_text("\n".join((["path,label"] if header else []) + rows[::-1] + [""]) + "\n")
    data = read_labelled(csv)
    assert data.classes == folder.classes
    assert sorted(zip(data.paths, data.labels, strict=True)) == sorted(
        [(tmp_path / p.relative_to(FASHION), y) for p, y in zip(folder.paths[:50], folder.labels[:50], strict=True)]
        + list(zip(folder.paths[50:], folder.labels[50:], strict=True)))


def test_validation_classes_keep_the_training_indices():
    train = read_labelled(FASHION / "train")
    val = read_labelled(FASHION / "val", classes=train.classes)
    assert val.classes == train.classes and val.counts() == [10] * 10


@pytest.mark.parametrize("fraction, held", [(0.2, 6), (0.5, 15), (0.01, 1)])
def test_the_validation_split_holds_out_that_share_of_each_class(fraction, held):
    data = read_labelled(FASHION / "train")
    train, val = split(data, fraction, seed=0)
    assert val.counts() == [held] * 10 and train.counts() == [30 - held] * 10
    assert set(train.paths) | set(val.paths) == set(data.paths) and not set(train.paths) & set(val.paths)
    assert list(val.paths) == sorted(val.paths)  # the images keep their order
    assert split(data, fraction, seed=0)[1] == val  # the seed decides
    if held < 15:
        assert split(data, fraction, seed=1)[1].paths != val.paths


def test_each_process_reads_its_share_of_the_same_global_batches():
    one = Schedule(images=50, batch_size=12, seed=3)
    assert one.steps_per_epoch == 4  # 2 images left out per epoch, a different 2 each epoch
    steps = list(one.micro_batches(0, 8))
    for epoch in (0, 1):
        seen = [i for batch in steps[4 * epoch:4 * epoch + 4] for i, e in batch if e == epoch]
        assert len(seen) == len(set(seen)) == 48  # no image twice in an epoch
        assert seen == np.random.default_rng([3, epoch]).permutation(50)[:48].tolist()
    for world, accumulate in [(2, 1), (3, 2), (2, 3)]:
        shares = [list(Schedule(50, 12, 3, world, rank, accumulate).micro_batches(0, 8)) for rank in range(world)]
        for step in range(8):  # rank 0's micro-batches, then rank 1's, ...: the one-process batch
            joined = [key for rank in range(world) for m in range(accumulate)
                      for key in shares[rank][step * accumulate + m]]
            assert joined == steps[step]
        resumed = list(Schedule(50, 12, 3, world, 1, accumulate).micro_batches(5, 8))
        assert resumed == shares[1][5 * accumulate:]  # resuming at a step reads what an unbroken run reads


@pytest.mark.parametrize("batch, world, accumulate, message", [
    (51, 1, 1, "batch size 51 is larger than the 50 training images"),
    (12, 5, 1, "does not split evenly into 5 processes x 1 accumulation step; give a multiple of 5"),
    (12, 2, 4, "does not split evenly into 2 processes x 4 accumulation steps; give a multiple of 8"),
])
def test_a_batch_that_cannot_be_cut_is_refused(batch, world, accumulate, message):
    with pytest.raises(Exception, match=message):
        Schedule(50, batch, 0, world, 0, accumulate)


def test_crops_cover_5_to_100_percent_of_the_image_at_aspect_ratios_from_3_4_to_4_3():
    rng = np.random.default_rng(0)
    boxes = [crop_box(40, 30, rng) for _ in range(4000)]
    area = np.array([(r - left) * (b - t) / 1200 for left, t, r, b in boxes])
    aspect = np.array([(r - left) / (b - t) for left, t, r, b in boxes])
    assert all(0 <= left < r <= 40 and 0 <= t < b <= 30 for left, t, r, b in boxes)
    # Whole pixels move the bounds a little (observed area 4.7% to 97.5%).
    assert 0.04 <= area.min() < 0.07 and area.max() > 0.9
    assert 0.65 <= aspect.min() < 0.80 and 1.25 < aspect.max() <= 1.45  # observed 0.70 (7/10), 1.43 (10/7)
    # A draw that does not fit is drawn again; after 10 misses the whole image is taken, which is rare.
    assert np.mean(area == 1) < 0.02  # observed 0 of 4000


def test_half_the_training_inputs_are_flipped_and_the_draw_is_the_keys():
    image = Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).convert("RGB")
    pre = Preprocess(size=(16, 16), interpolation="bicubic")
    flips = 0
    for k in range(400):
        rng = np.random.default_rng([0, 0, k])
        crop = image.crop(crop_box(32, 32, rng))
        flipped = rng.random() < 0.5
        x = augmented(image, pre, np.random.default_rng([0, 0, k]))
        if flipped:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        flips += flipped
        # The crop, resized straight to the input size by the file's own resampler and normalised.
        assert torch.equal(x, to_tensor(crop.resize((16, 16), Image.Resampling.BICUBIC), pre))
    assert 170 <= flips <= 230  # observed 199 of 400


def test_an_image_is_augmented_by_its_key_alone():
    data = read_labelled(FASHION / "val")
    pre = Preprocess(size=(32, 32))
    images = Images(data, pre, augment=True, seed=0)
    a, y = images[(5, 2)]
    assert torch.equal(a, images[(5, 2)][0]) and y == data.labels[5]
    assert not torch.equal(a, images[(5, 3)][0])  # another epoch, another crop
    assert not torch.equal(a, Images(data, pre, augment=True, seed=1)[(5, 2)][0])
    plain = Images(data, pre, augment=False, seed=0)
    assert torch.equal(plain[(5, 2)][0], plain[(5, 3)][0])  # evaluation inputs are the same every time
    assert torch.equal(plain[(5, 0)][0], to_tensor(load_rgb(data.paths[5]), pre))  # the file's preprocessing
