"""The training images and their classes: a class-per-folder tree or a CSV of `path,label`, checked before
anything trains, split for validation, and read as the model's inputs in a fixed order.

Every image is looked at before the first step (its header: format, size), so a folder with a bad file
says so at once rather than hours in; what cannot be read is skipped with a warning naming the first
few (or, `strict`, is an error). The order of the images is a function of the seed alone, never of the
number of processes or data-loading workers.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import VitConvertError, VitConvertWarning
from ..formats.weights_file import Preprocess
from ..inference.images import SUFFIXES, find_images, load_rgb, open_image
from ..inference.transform import to_tensor
from .augment import augmented

SHOWN = 3  # unreadable images named in the warning; the rest are counted
HEADER_THREADS = 8  # reading headers waits on the disk, not the CPU (and a network file system waits longer)


@dataclass(frozen=True)
class Labelled:
    """Images and the index of each one's class in `classes` (names sorted, as torchvision's ImageFolder
    sorts its folders)."""

    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> Labelled:
        return Labelled(self.classes, tuple(self.paths[i] for i in indices), tuple(self.labels[i] for i in indices))

    def counts(self) -> list[int]:
        """Images per class, in class order."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes)).tolist()


def read_labelled(source: str | os.PathLike, classes: Sequence[str] | None = None,
                  strict: bool = False) -> Labelled:
    """The images of `source` (a folder with a sub-folder per class, or a CSV file of `path,label` rows,
    paths relative to the file) with their classes, every image's header read.

    `classes`: those of the training set, for a validation set: its classes must be among them and keep
    their indices. Unreadable images are skipped with a `VitConvertWarning` (with `strict`, an error).
    """
    source = Path(source)
    if source.is_dir():
        names, paths, labels = _from_folder(source)
    elif source.is_file():
        names, paths, labels = _from_csv(source)
    else:
        raise VitConvertError(f"{source}: no such folder or CSV file")
    if classes is None:
        classes = names
        if len(classes) < 2:
            raise VitConvertError(f"{source}: only one class ({classes[0]!r}); a classifier needs at least 2 "
                                  "(one sub-folder of images per class, or two labels in the CSV)")
    else:
        unknown = [name for name in names if name not in classes]
        if unknown:
            raise VitConvertError(f"{source}: classes the training data does not have: "
                                  f"{', '.join(map(repr, unknown[:SHOWN]))}"
                                  f"{f' and {len(unknown) - SHOWN} more' if len(unknown) > SHOWN else ''}")
    index = {name: i for i, name in enumerate(classes)}
    labelled = Labelled(tuple(classes), tuple(paths), tuple(index[names[i]] for i in labels))
    return _readable(labelled, source, strict, every_class=classes is names)


def _from_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Class names (the sub-folders, sorted), the images under each (sub-folders searched too) and the
    position of each one's class."""
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise VitConvertError(f"{root}: cannot read folder ({e.strerror or e})") from None
    folders = [p for p in entries if p.is_dir()]
    if not folders:
        loose = sum(p.suffix.lower() in SUFFIXES for p in entries)
        what = f"{loose} images but no class folders" if loose else "no class folders"
        raise VitConvertError(f"{root}: {what}; give a folder with one sub-folder of images per class "
                              "(its name is the class name), or a CSV file of path,label rows")
    loose = len(entries) - len(folders)
    if loose:
        warnings.warn(f"{root}: {loose} file{'s' if loose > 1 else ''} beside the class folders left out "
                      "(an image belongs to the class folder it is in)", VitConvertWarning, stacklevel=3)
    paths, labels = [], []
    for i, folder in enumerate(folders):
        try:
            found = find_images([folder], recursive=True).paths
        except VitConvertError as e:
            raise VitConvertError(f"class {folder.name!r}: {e}") from None
        paths += found
        labels += [i] * len(found)
    return [p.name for p in folders], paths, labels


def _from_csv(path: Path) -> tuple[list[str], list[Path], list[int]]:
    """Rows `path,label` (a first row `path,label` is a header); blank lines skipped."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), 1) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise VitConvertError(f"{path}: cannot read as a CSV file of path,label rows ({e})") from None
    if rows and [cell.strip().lower() for cell in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise VitConvertError(f"{path}: no rows; a CSV file of path,label rows, one image a row")
    pairs = []
    for n, row in rows:
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise VitConvertError(f"{path} line {n}: expected path,label, got {','.join(row)[:80]!r}")
        pairs.append((path.parent / row[0].strip(), row[1].strip()))
    names = sorted({label for _, label in pairs})
    index = {name: i for i, name in enumerate(names)}
    return names, [p for p, _ in pairs], [index[label] for _, label in pairs]


def _readable(labelled: Labelled, source: Path, strict: bool, every_class: bool) -> Labelled:
    """`labelled` without the images whose header cannot be read; each training class must keep one."""
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        problems = list(pool.map(_header_problem, labelled.paths))
    bad = [problem for problem in problems if problem]
    shown = "; ".join(bad[:SHOWN]) + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
    if bad and strict:
        raise VitConvertError(f"{source}: {len(bad)} of {len(labelled)} images cannot be read: {shown}")
    kept = labelled.subset([i for i, problem in enumerate(problems) if not problem]) if bad else labelled
    if every_class:
        empty = [name for name, n in zip(kept.classes, kept.counts(), strict=True) if not n]
        if empty:
            raise VitConvertError(f"{source}: class {empty[0]!r} has no readable images"
                                  + (f" (nor {len(empty) - 1} more)" if len(empty) > 1 else "") + f": {shown}")
    elif not len(kept):
        raise VitConvertError(f"{source}: no readable images: {shown}")
    if bad:
        warnings.warn(f"{source}: skipped {len(bad)} of {len(labelled)} images that cannot be read ({shown}); "
                      "--strict (strict=True) makes this an error", VitConvertWarning, stacklevel=3)
    return kept


def _header_problem(path: Path) -> str | None:
    try:
        open_image(path).close()
    except VitConvertError as e:
        return str(e)
    return None


def split(labelled: Labelled, fraction: float, seed: int) -> tuple[Labelled, Labelled]:
    """(train, validation): `fraction` of each class (at least one image) held out, chosen by the seed;
    both keep the images' order."""
    if not 0 < fraction < 1:
        raise VitConvertError(f"the validation split must be a fraction between 0 and 1, got {fraction}")
    labels = np.asarray(labelled.labels)
    held: list[int] = []
    for c, name in enumerate(labelled.classes):
        members = np.flatnonzero(labels == c)
        n = max(1, round(len(members) * fraction))
        if n >= len(members):
            raise VitConvertError(f"class {name!r} has {len(members)} image{'s' if len(members) > 1 else ''}: too "
                                  f"few to hold {fraction:g} of them out for validation and train on the rest")
        held += np.random.default_rng([seed, c]).permutation(members)[:n].tolist()
    held_set = set(held)
    return (labelled.subset([i for i in range(len(labelled)) if i not in held_set]),
            labelled.subset(sorted(held_set)))


@dataclass(frozen=True)
class Schedule:
    """Which images each process reads at each step.

    Epoch e visits the training images in the order of a permutation seeded by (seed, e); its step b
    is the global batch of positions b*B to (b+1)*B (a last partial batch is left out, so every step
    sees B images). Process r of `world` takes the r-th contiguous share of each global batch, cut into
    `accumulate` micro-batches. A key is (image index, epoch): the augmentation is drawn from it, so it
    too is the same whatever the number of processes or workers.
    """

    images: int
    batch_size: int
    seed: int
    world: int = 1
    rank: int = 0
    accumulate: int = 1

    def __post_init__(self) -> None:
        if self.batch_size > self.images:
            raise VitConvertError(f"the batch size {self.batch_size} is larger than the {self.images} training "
                                  "images; give a smaller --batch-size (batch_size=)")
        if self.batch_size % (self.world * self.accumulate):
            raise VitConvertError(
                f"the batch size {self.batch_size} does not split evenly into {self.world} process"
                f"{'es' if self.world > 1 else ''} x {self.accumulate} accumulation step"
                f"{'s' if self.accumulate > 1 else ''}; give a multiple of {self.world * self.accumulate}")

    @property
    def steps_per_epoch(self) -> int:
        return self.images // self.batch_size

    @property
    def micro_batch(self) -> int:
        return self.batch_size // (self.world * self.accumulate)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.images)

    def micro_batches(self, start: int, stop: int) -> Iterator[list[tuple[int, int]]]:
        """This process's micro-batches of keys for steps `start` to `stop`, in order."""
        order, order_epoch = None, -1
        share = self.batch_size // self.world
        for step in range(start, stop):
            epoch, b = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.order(epoch), epoch
            mine = order[b * self.batch_size + self.rank * share:][:share]
            for m in range(self.accumulate):
                yield [(int(i), epoch) for i in mine[m * self.micro_batch:(m + 1) * self.micro_batch]]


class Steps(torch.utils.data.Sampler):
    """`Schedule.micro_batches` as a DataLoader batch sampler."""

    def __init__(self, schedule: Schedule, start: int, stop: int) -> None:
        self.schedule, self.start, self.stop = schedule, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.schedule.micro_batches(self.start, self.stop)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.schedule.accumulate


class Images(torch.utils.data.Dataset):
    """Key (index, epoch) -> (the model's input, the class index). Training inputs are augmented
    (`augment.augmented`, drawn from (seed, epoch, index)); evaluation inputs are the file's own
    preprocessing. An image that no longer decodes comes back as its error message, for the loop to
    raise in the main process as one line (a worker's exception would arrive wrapped in its traceback)."""

    def __init__(self, data: Labelled, preprocess: Preprocess, augment: bool, seed: int) -> None:
        self.data, self.preprocess, self.augment, self.seed = data, preprocess, augment, seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | str, int]:
        i, epoch = key
        try:
            image = load_rgb(self.data.paths[i])
        except VitConvertError as e:
            return str(e), self.data.labels[i]
        if self.augment:
            return augmented(image, self.preprocess, np.random.default_rng([self.seed, epoch, i])), self.data.labels[i]
        return to_tensor(image, self.preprocess), self.data.labels[i]


def collate(items: Sequence[tuple[torch.Tensor | str, int]]) -> tuple[torch.Tensor, torch.Tensor] | str:
    """A micro-batch as (inputs, labels), or the first failed image's message."""
    for x, _ in items:
        if isinstance(x, str):
            return x
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


def loader(dataset: Images, batches: torch.utils.data.Sampler | Sequence[list[tuple[int, int]]], workers: int,
           pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The micro-batches, prepared in `workers` processes ahead of the model (0: in this one)."""
    batches_iter = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                               collate_fn=collate, pin_memory=pin_memory)
    for batch in batches_iter:
        if isinstance(batch, str):
            raise VitConvertError(f"{batch} (its header read before training); remove or replace it and run again")
        yield batch
