"""PyTorch state dicts, read safely: a .safetensors, or a pickled .pth/.bin loaded with weights_only (no code
runs), out of the wrappers training checkpoints keep them in. The reader three source formats share (timm, the
tutorial ViTs, transformers' pytorch_model.bin); what a format makes of the keys is the format's.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import io
import mmap
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import VitConvertError
from .memory import check_memory
from .paths import check_input
from .safetensors_file import read_header, read_tensors

MADV_DONTNEED = 4  # Linux's madvise advice: the pages may be dropped (a file's are read again when touched)
# Training checkpoints keep the weights under one of these (DINO: the teacher is the one to use).
WRAPPERS = ("state_dict", "model", "model_ema", "module", "teacher", "student")


@dataclass(frozen=True)
class Checkpoint:
    """The tensors of a checkpoint, out of its wrappers and 'module.' prefixes."""

    tensors: dict[str, torch.Tensor]
    wrapper: tuple[str, ...] = ()  # the keys it was found under, outermost first (DINO: ('teacher',))
    # Address ranges of the memory-mapped file the tensors are in (a zip-format .pth), for TensorReader.
    mapped: tuple[tuple[int, int], ...] = ()


def read_state_dict(path: str | os.PathLike) -> Checkpoint:
    """Tensors of a .safetensors, or of a .pth/.bin read with weights_only (no code runs). A zip-format
    pickle's tensors stay in the file, mapped, until read (a sharded checkpoint's shards: only the pickle is
    read to list them; a tensor's pages are read when it is); a TorchScript archive's are read without
    running its code."""
    path = check_input(path, "a checkpoint file")
    if path.suffix == ".safetensors":
        read_header(path)  # clear errors for truncated or foreign files
        return unwrap(read_tensors(path), str(path))
    if torchscript_root(path) is not None:
        return Checkpoint(read_torchscript(path))
    mapped = zipfile.is_zipfile(path)
    if not mapped:  # an old-style pickle is read whole (a float32 copy of each tensor comes later, one at a time)
        check_memory(path.stat().st_size, f"reading {path} (a pickle that is not zip-format is read whole)")
    try:
        # DINO's training checkpoints carry their command line as an argparse.Namespace: plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            # A zip-format file (torch.save's since 1.6) is memory-mapped: its tensors are read from the file
            # as the writer asks for them, so converting holds about one tensor, not the whole file.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, zip errors...
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
            # torch's message is a page long; its one informative sentence names what was refused
            reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", text)
            raise VitConvertError(
                f"{path}: refused: the pickle asks to run code or build objects that are not plain "
                f"tensors ({reason[1].strip() if reason else 'weights_only load failed'}). vitconvert "
                "loads pickles only with weights_only=True; if you trust the file, re-save its state "
                "dict with safetensors") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise VitConvertError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    checkpoint = unwrap(obj, str(path))
    return dataclasses.replace(checkpoint, mapped=_mapped_ranges(path)) if mapped else checkpoint


def _mapped_ranges(path: Path) -> tuple[tuple[int, int], ...]:
    """Where `path` is mapped into this process (Linux's /proc/self/maps); () where that cannot be read."""
    real = os.path.realpath(path)
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == real:
                    start, end = (int(v, 16) for v in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return ()
    return tuple(ranges)


def _release_pages(t: torch.Tensor, ranges: tuple[tuple[int, int], ...]) -> None:
    """Let the system drop the pages of a mapped tensor once it has been copied out (madvise DONTNEED): they
    are the file's, read again from it if touched, so a conversion's resident memory stays near one tensor.
    Only inside the file's own mapping (never anonymous memory, which DONTNEED would zero)."""
    start = t.untyped_storage().data_ptr()
    end = start + t.untyped_storage().nbytes()
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, end // page * page  # whole pages only: neighbours may still be needed
    if hi <= lo or not any(a <= lo and hi <= b for a, b in ranges):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED)


def torchscript_root(path: Path) -> str | None:
    """The folder of a TorchScript archive's members (OpenAI's CLIP releases are such archives), or None."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    roots = {n.split("/", 1)[0] for n in names if n.endswith("/constants.pkl") or "/code/" in n}
    return next(iter(roots)) if len(roots) == 1 and f"{next(iter(roots))}/data.pkl" in names else None


class _ScriptModule:
    """A TorchScript module's attributes as data.pkl holds them: its state, never its code."""


# What a TorchScript data.pkl may name besides its own modules' classes (whose code is never run: each becomes a
# _ScriptModule holding its attributes): tensors rebuilt from storages, as torch.load(weights_only=True) allows,
# and TorchScript's typed lists and type tags of plain attributes, taken as the values they wrap.
_STORAGES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
             "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
             "BoolStorage": torch.bool, "ByteStorage": torch.uint8, "CharStorage": torch.int8,
             "ShortStorage": torch.int16}
_PLAIN_VALUES = {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "restore_type_tag"}


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptModule,), {})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        if module == "torch.jit._pickle" and name in _PLAIN_VALUES:
            return lambda value, *_: value
        raise pickle.UnpicklingError(f"{module}.{name} is not a tensor")

    def persistent_load(self, saved_id: tuple) -> torch.storage.TypedStorage:
        _, dtype, key, _, numel = saved_id  # the storage's class, which find_class gave as its dtype
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"storage {key} of an unknown type")
        raw = torch.frombuffer(bytearray(self.archive.read(f"{self.root}/data/{key}")), dtype=dtype, count=numel)
        # _rebuild_tensor_v2 takes the typed storage torch.load gives it (internal: no deprecation warning).
        return torch.storage.TypedStorage(wrap_storage=raw.untyped_storage(), dtype=dtype, _internal=True)


def read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive (its modules' parameters, buffers and tensor attributes, by dotted
    name), read from data.pkl with an unpickler that builds tensors and plain records only: no code in the
    archive runs, as none does under torch.load(weights_only=True)."""
    root = torchscript_root(path)
    with zipfile.ZipFile(path) as archive:
        try:
            top = _TorchScriptUnpickler(archive.read(f"{root}/data.pkl"), archive, root).load()
        except (pickle.UnpicklingError, ValueError, KeyError, TypeError, EOFError) as e:
            raise VitConvertError(f"{path}: a TorchScript archive whose data vitconvert cannot read as tensors ({e}); "
                                  "get its state dict with open_clip: torch.save(open_clip.load_openai_model("
                                  "PATH, device='cpu', jit=False).state_dict(), 'state.pt')") from None
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: object, prefix: str) -> None:
        for name, value in vars(obj).items():
            if isinstance(value, torch.Tensor):
                tensors[prefix + name] = value
            elif isinstance(value, _ScriptModule):
                walk(value, f"{prefix}{name}.")

    if not isinstance(top, _ScriptModule):
        raise VitConvertError(f"{path}: a TorchScript archive without a module in its data.pkl")
    walk(top, "")
    if not tensors:
        raise VitConvertError(f"{path}: the TorchScript archive holds no tensors")
    return tensors


def unwrap(obj: object, where: str) -> Checkpoint:
    """The tensor dict inside training-checkpoint wrappers, without 'module.' prefixes."""
    wrapper: list[str] = []
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = obj[inner]
        wrapper.append(inner)
    if not isinstance(obj, Mapping) or not obj:
        raise VitConvertError(f"{where}: no state dict found (expected a dict of tensors, "
                              f"possibly under {', '.join(repr(w) for w in WRAPPERS)})")
    tensors = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            if not isinstance(k, str):
                raise VitConvertError(f"{where}: the state dict has a key that is not a string: {k!r}")
            tensors[k.removeprefix("module.")] = v
    if not tensors:
        raise VitConvertError(f"{where}: the checkpoint holds no tensors")
    return Checkpoint(tensors, tuple(wrapper))


class TensorReader:
    """A state dict's tensors as the mapping engine reads them (float32 numpy arrays, one at a time)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], path: Path | None = None,
                 mapped: tuple[tuple[int, int], ...] = ()) -> None:
        self.tensors = tensors
        self.path = path
        self.mapped = mapped  # Checkpoint.mapped: tensors there are copied out and their pages released
        self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def check_weights(self, keys: Iterable[str], where: str) -> None:
        """Real-valued dense tensors only: an int or bool 'weight' would convert silently to nonsense."""
        for k in keys:
            t = self.tensors[k]
            if not t.is_floating_point() or t.layout != torch.strided or t.device.type != "cpu" or t.is_quantized:
                kind = f"{t.dtype}" + ("" if t.layout == torch.strided else f", {t.layout}") + \
                    ("" if t.device.type == "cpu" else f", on {t.device.type}")
                raise VitConvertError(f"{where}: tensor {k} is {kind}; expected dense floating point weights")

    def read(self, key: str) -> np.ndarray:
        t = self.tensors[key].detach()
        if not self.mapped:
            return t.to(torch.float32).numpy()
        out = t.to(torch.float32, copy=True).numpy()
        _release_pages(t, self.mapped)
        return out
