"""`vitconvert list` and `vitconvert download`: published checkpoints by name (weights_manifest.json)."""

from __future__ import annotations

from pathlib import Path

import click

from .errors import debug_option
from .progress import progress_bar


@click.command("list")
@click.option("--filter", "filter_", metavar="TEXT",
              help="Only entries whose name, architecture, timm model, file or label set contain "
                   "every word of TEXT (case-insensitive), e.g. --filter 'B16 384'.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the (filtered) manifest as JSON, in the manifest's own schema.")
@debug_option
def list_cmd(filter_: str | None, as_json: bool) -> None:
    """List the published checkpoints that 'vitconvert download NAME' knows.

    'vitconvert download' takes the NAME or the TIMM MODEL of a row.

    \b
    Examples:
      vitconvert list
      vitconvert list --filter "B16 384"
      vitconvert list --filter augreg_in21k_ft_in1k --json
    """
    import json

    from ..catalog.manifest import load_manifest

    manifest = load_manifest()
    entries = list(manifest.checkpoints)
    if filter_:
        words = filter_.lower().split()
        entries = [e for e in entries if all(w in _haystack(e) for w in words)]
    if as_json:
        doc = {"schema_version": manifest.schema_version, "checkpoints": [e.to_dict() for e in entries]}
        click.echo(json.dumps(doc, indent=2))
        return
    if not entries:
        click.echo(f"no checkpoint matches {filter_!r}", err=True)
        return
    rows = [("NAME", "ARCH", "RES", "CLASSES", "TIMM MODEL", "TOP-1")]
    for e in entries:
        classes = f"{e.num_classes}" + (" (zero head)" if e.head_is_zero else "")
        rows.append((e.name, e.arch, str(e.train_resolution), classes, e.timm_model or "-",
                     f"{e.top1:.2f}" if e.top1 is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def _haystack(e) -> str:
    return " ".join([e.name, e.arch, e.timm_model or "", e.filename, e.labels or "", e.family]).lower()


@click.command("download")
@click.argument("name", metavar="NAME|TIMM_MODEL")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to put the result (default: the cache; see below).")
@click.option("--no-convert", is_flag=True, help="Only download and verify the original .npz.")
@click.option("--force", is_flag=True, help="Download and convert again; replace an existing --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output; print only the result's path.")
@debug_option
def download_cmd(name: str, out: Path | None, no_convert: bool, force: bool, quiet: bool) -> None:
    """Download a published checkpoint (NAME or TIMM_MODEL, see 'vitconvert list') and convert it.

    \b
    The download goes to the cache ($VITCONVERT_CACHE, else the platform's cache
    directory) as NAME.npz, resumes if interrupted, and is checked against the
    manifest's size and sha256 where known. The converted weights file is
    NAME.safetensors in the cache, or --out. Prints the resulting path.
    $VITCONVERT_MIRROR replaces https://storage.googleapis.com/vit_models in URLs.

    \b
    Examples:
      vitconvert download augreg-B16-in21k-ft-in1k-384
      vitconvert download vit_base_patch16_224.augreg_in21k_ft_in1k
      vitpredict cat.jpg --model augreg-B16-in21k-ft-in1k-224
      vitconvert download augreg-S16-in21k-ft-in1k-224 --no-convert --out S16.npz
    """
    from ..catalog.download import download

    with progress_bar("downloading", quiet, in_bytes=True) as progress:
        path = download(name, out=out, convert=not no_convert, force=force, progress=progress.update,
                        status=None if quiet else progress.echo)
    click.echo(str(path))
