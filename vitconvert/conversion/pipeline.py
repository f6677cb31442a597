"""The one conversion pipeline: any source format's file to our weights file.

Every step but reading and planning is here, once and in this order: the dtype and the output path are
checked (before anything large is read), the format is the one named or the one the file shows, the format
opens and plans it, the plan's rules are checked against every source key (each is mapped, or left out with
its reason), the weights are checked to be dense floating point, the head is looked at, and the record is
written with the tensors, atomically.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.errors import VitConvertError, name_list
from ..formats.dtypes import check_dtype
from ..formats.file_kind import FileKind, file_kind
from ..formats.paths import check_input, check_output
from ..formats.weights_file import Preprocess, Source, WeightsRecord, write_weights
from .mapping import head_is_zero, plan_tensors
from .source import Probe, Request, SourceFormat, all_formats, source_format

# At most this many left-out keys are named in a record's note (all of them are in --json's left_out).
NOTED_LEFT_OUT = 8


@dataclass(frozen=True)
class Converted:
    """What a conversion wrote: the record, the format that read the source, and the keys it left out."""

    record: WeightsRecord
    format: str
    left_out: dict[str, str]


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, source: str | None = None, force: bool = False,
            dtype: str = "float32", labels: str | Sequence[str] | None = None, preprocess: Preprocess | None = None,
            pos_resize: str | None = None, allow_nonfinite: bool = False,
            progress: Callable[[int, int], None] | None = None, **format_options: Any) -> WeightsRecord:
    """Convert the checkpoint at `src` (a file, or a transformers directory) into our weights file at `dst`.

    source: the format ('jax', 'timm', 'hf', 'lucidrains', 'jeonsworld', 'torch-encoder', 'torchvision', 'open_clip',
    'hf-towers'; see
    `vitconvert convert --help`); None: the one the file shows (an error names the candidates when two fit).
    dtype: stored tensor dtype. labels ('imagenet-1k', 'imagenet-21k' or the class names in class order),
    preprocess, pos_resize: what to record instead of the format's defaults. allow_nonfinite: convert
    weights holding NaN or Inf. progress(done_bytes, total_bytes) is called after each tensor.
    format_options: the chosen format's own (jax: gelu, catalog; timm: model, num_heads, timm_kwargs;
    lucidrains, jeonsworld: model_args; torch-encoder: model_args, names; torchvision: model, num_heads,
    weights_enum; open_clip: model, image_only, tokenizer; hf-towers: image_only, tokenizer); one it does not
    take is an error.
    """
    return convert_source(src, dst, source=source, force=force, dtype=dtype, labels=labels, preprocess=preprocess,
                          pos_resize=pos_resize, allow_nonfinite=allow_nonfinite, progress=progress,
                          options=format_options).record


def convert_source(src: str | os.PathLike, dst: str | os.PathLike, *, source: str | None = None,
                   force: bool = False, dtype: str = "float32", labels: str | Sequence[str] | None = None,
                   preprocess: Preprocess | None = None, pos_resize: str | None = None,
                   allow_nonfinite: bool = False, progress: Callable[[int, int], None] | None = None,
                   options: Mapping[str, Any] | None = None,
                   defaults: Mapping[str, Any] | None = None) -> Converted:
    """`convert`, telling also which format read the file and what it left out. defaults: format options
    used where the chosen format takes them (`vitconvert convert` gives the jax format the manifest)."""
    check_dtype(dtype)
    dst = check_output(dst, force, suffix=".safetensors")  # before reading anything large
    fmt = source_format(source) if source is not None else None
    given = fmt.check_options(options or {}) if fmt is not None else {}  # a named format: before any read
    found = probe(src)
    if fmt is None:
        fmt = detect(found)
        given = fmt.check_options(options or {})
    known = {o.name for o in fmt.options}
    given = {**{k: v for k, v in (defaults or {}).items() if k in known}, **given}
    reader = fmt.open(found)
    try:
        plan = fmt.plan(reader, Request(given, labels, preprocess, pos_resize))
        where = str(reader.path)
        ignore = [k for k in plan.left_out if k in reader.shapes]
        specs = plan_tensors(plan.rules, reader, plan.bindings, where=where, ignore=ignore)
        if check := getattr(reader, "check_weights", None):
            check(sorted(set(reader.shapes) - set(ignore)), where)
        cfg = plan.config if pos_resize is None else replace(plan.config, pos_resize=pos_resize)
        record = WeightsRecord(
            config=cfg, preprocess=preprocess or plan.preprocess,
            source=Source(format=plan.source_format, file=reader.path.name),
            labels=labels if labels is not None else plan.labels, head_is_zero=head_is_zero(specs),
            head_is_embedding=plan.head_is_embedding, text=plan.text,
            notes=tuple(plan.notes + _left_out_note(plan.left_out)))
        record = write_weights(dst, specs, record, source_path=reader.path, dtype=dtype, force=force,
                               allow_nonfinite=allow_nonfinite, progress=progress,
                               before_commit=getattr(reader, "verify", None))
    finally:
        if close := getattr(reader, "close", None):
            close()
    return Converted(record, fmt.name, dict(plan.left_out))


def _left_out_note(left_out: Mapping[str, str]) -> list[str]:
    if not left_out:
        return []
    by_reason: dict[str, list[str]] = {}
    for key, reason in left_out.items():
        by_reason.setdefault(reason, []).append(key)
    parts = [f"{name_list(keys, NOTED_LEFT_OUT)} ({reason})" for reason, keys in by_reason.items()]
    return [f"source tensors left out: {'; '.join(parts)}"]


def _refuse_ours(src: Path, kind: FileKind) -> None:
    """Our own file given as a source: it needs no conversion (and its keys would pass for timm's)."""
    if kind.kind == "vitconvert" and _whole(src):
        version = kind.description.rpartition("format version ")[2].rstrip(")")
        raise VitConvertError(f"{src} is already a vitconvert weights file (format version {version or '?'}): use "
                              f"it as it is (vitpredict --weights {src})")


def _whole(path: Path) -> bool:
    """A safetensors file whose header's tensors are all there (a truncated one is the format reader's to name)."""
    from ..formats.safetensors_file import read_header

    try:
        read_header(path)
    except VitConvertError:
        return False
    return True


def probe(src: str | os.PathLike) -> Probe:
    """What detection and the format's reader start from: the kind of `src`, and its tensor names where they
    can be listed (a pickle must be read whole: the probe holds its state dict for the format to open). Our
    own file is refused here: it needs no conversion."""
    path = Path(src)
    if not path.is_dir():
        check_input(path, "a checkpoint file")  # before any read: no FIFO
    kind = file_kind(path)
    if kind.kind == "missing":
        raise VitConvertError(f"{path}: no such file or directory")
    _refuse_ours(path, kind)
    if kind.kind == "npz":
        with zipfile.ZipFile(path) as z:
            return Probe(path, kind, frozenset(n.removesuffix(".npy") for n in z.namelist()))
    if kind.kind == "safetensors":
        from ..formats.safetensors_file import read_header

        return Probe(path, kind, frozenset(k.removeprefix("module.") for k in read_header(path).tensors))
    if kind.kind in ("pickle", "torch-zip"):
        from ..formats.state_dict import read_state_dict  # torch, for pickles only

        checkpoint = read_state_dict(path)
        return Probe(path, kind, frozenset(checkpoint.tensors), checkpoint.wrapper, checkpoint)
    return Probe(path, kind)


def detect(found: Probe) -> SourceFormat:
    """The format of the probed file, from its magic bytes and key names; an error when none or several fit."""
    src = found.path
    claims = [(fmt, d) for fmt in all_formats() if (d := fmt.detect(found)) is not None]
    if not claims:
        keys = f"; its keys begin: {', '.join(sorted(found.keys)[:6])}" if found.keys else ""
        looked = "; ".join(f"{fmt.name}: {fmt.looks_for}" for fmt in all_formats())
        raise VitConvertError(f"{src}: no source format recognises it: it is {found.kind.description}{keys}. "
                              f"Looked for {looked}. Name the format with --from FORMAT (source=...)")
    if len(claims) > 1:
        claims.sort(key=lambda c: -c[1].confidence)
        fits = "; ".join(f"--from {fmt.name} ({d.reason})" for fmt, d in claims)
        raise VitConvertError(f"{src} fits more than one source format: {fits}. Choose one with --from")
    return claims[0][0]
