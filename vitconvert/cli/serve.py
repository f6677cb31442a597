"""`vitconvert serve`: a weights file behind HTTP, with dynamic batching; `--ray` on Ray Serve.

Thin: click parses, `vitconvert.serve` builds the app (serve/app.py), runs it on uvicorn (serve/server.py) or
deploys it on Ray Serve (serve/ray.py). The file's record is read and checked before torch is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .errors import debug_option


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("weights", type=click.Path(path_type=Path), metavar="FILE")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 127.0.0.1 takes connections from this machine only (0.0.0.0: any).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port, said at start).")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most requests run through the model as one batch.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Longest a request waits for others to join its batch, in milliseconds.")
@click.option("--classes", metavar="imagenet-1k|FILE|LIST",
              help="With a two-tower file (CLIP, SigLIP, LiT): serve the zero-shot classifier of these classes, "
                   "as vitconvert zeroshot builds it (comma-separated names, a file with one a line, or "
                   "imagenet-1k).")
@click.option("--templates", metavar="imagenet|FILE|LIST",
              help="With --classes: the prompt templates, each with one {} (default imagenet).")
@click.option("--labels", metavar="imagenet-1k|imagenet-21k|FILE",
              help="Class names of a classifier (a FILE has one name a line); default: the file's own.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "int8"]), default="float32",
              show_default=True, help="Precision of the model, as in vitpredict --dtype.")
@click.option("--max-mb", type=click.FloatRange(min=0, min_open=True), default=32.0, show_default=True,
              help="Largest request body, in MiB; larger ones are refused (413) before they are read whole.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Serve on Ray Serve (pip install 'vitconvert[serve-ray]'): alone, a local Ray on this "
                   "machine; with ADDRESS (e.g. auto or ray://head:10001), that cluster.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: copies of the app, each with its own model and batcher.")
@click.option("--cpus-per-replica", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="With --ray: CPUs each replica takes.")
@debug_option
def serve_cmd(weights: Path, host: str, port: int, max_batch: int, max_wait_ms: float, classes: str | None,
              templates: str | None, labels: str | None, device: str, dtype: str, max_mb: float,
              ray_address: str | None, replicas: int, cpus_per_replica: float) -> None:
    """Serve FILE over HTTP: POST /predict (an image as the body, or multipart field 'image'; ?top=K)
    answers the JSON vitpredict --json prints for it; POST /embed (?normalize=1, ?tokens=1) the embedding
    vitpredict --embed computes; GET /health (with batching counts); GET /model (the file's record).

    Requests that arrive together run through the model as one batch (--max-batch, --max-wait-ms). A bad
    request (not an image, truncated, too large, unknown route) gets a 4xx answer {"error": "..."} and the
    server goes on. SIGTERM answers the requests already accepted, then exits 0.

    \b
    Examples:
      vitconvert serve vit-b16.safetensors
      vitconvert serve vit-b16.safetensors --host 0.0.0.0 --port 9000 --max-batch 32 --max-wait-ms 10
      vitconvert serve vit-b16.safetensors --device cuda --dtype bfloat16 --max-batch 64
      vitconvert serve vit-b16.safetensors --ray --replicas 2
      vitconvert serve siglip-b16.safetensors --classes imagenet-1k
      vitconvert serve vit-b16.safetensors --ray auto --replicas 8 --host 0.0.0.0

    \b
    Then, from another shell:
      curl --data-binary @cat.jpg 'http://127.0.0.1:8000/predict?top=3'
      curl -F image=@cat.jpg http://127.0.0.1:8000/predict
      curl --data-binary @cat.jpg 'http://127.0.0.1:8000/embed?normalize=1'
      curl http://127.0.0.1:8000/health
    """
    from ..inference.plan import plan_prediction
    from ..serve.app import check_classes

    ctx = click.get_current_context()
    if ray_address is None:
        for name in ("replicas", "cpus_per_replica"):
            if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"--{name.replace('_', '-')} goes with --ray")
    if templates is not None and classes is None:
        raise click.UsageError("--templates fill in the names of --classes; give --classes too")
    if classes is not None and labels is not None:
        raise click.UsageError("--classes names the classes of a two-tower file: it cannot go with --labels")
    plan = plan_prediction(weights, labels=labels)  # the record, read once, before torch
    if classes is not None:
        check_classes(plan)
    options: dict[str, Any] = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "device": device,
                               "dtype": dtype, "max_bytes": int(max_mb * 1024 * 1024), "classes": classes,
                               "templates": templates}
    reach = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else "other machines too"

    def announce(url: str) -> None:
        click.echo(f"serving {weights} on {url} ({reach}); max batch {max_batch}, max wait {max_wait_ms:g} ms. "
                   "Stop with Ctrl-C or SIGTERM.", err=True)

    if ray_address is not None:
        from ..serve.ray import serve_on_ray

        serve_on_ray(plan.path, None if ray_address == "local" else ray_address, host, port, replicas=replicas,
                     cpus_per_replica=cpus_per_replica, gpus_per_replica=1.0 if device.startswith("cuda") else 0.0,
                     announce=announce, labels=labels, **options)
        click.echo("stopped", err=True)
        return
    from ..serve.app import create_app
    from ..serve.server import listen, run_server

    sock = listen(host, port)  # before the model loads: a port in use is said at once
    app = create_app(plan, **options)
    announce(f"http://{host}:{sock.getsockname()[1]}")
    run_server(app, sock)
    stats = app.state.batcher.stats()
    click.echo(f"stopped: {stats['requests']} images answered in {stats['batches']} batches", err=True)
