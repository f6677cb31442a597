"""Ray Data on this one machine against serial `vitpredict`: images/s over the 200-image folder.

    python -m benchmarks.ray_local [--rounds N] [--replicas 1 2]

Serial is `Predictor.predict` (what `vitpredict` runs) in this process; Ray is `vitconvert.cluster.predict_dataset`
consumed to the end, on a local Ray started once beforehand (its start-up is timed and reported apart, as
a cluster is started once for many jobs). One CPU stays free for Ray's reading and decoding tasks; the
replicas share the others (each runs as many torch threads as CPUs it has, at least one). Same weights,
same batch size, float32, ViT-B/16 at 224.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, markdown
from benchmarks.folder import NUM_IMAGES, make_folder, write_weights


def run(replicas: list[int], rounds: int, batch: int = 8) -> dict:
    import ray

    from vitconvert import Predictor
    from vitconvert.cluster import predict_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = [str(p) for p in make_folder(tmp / "images")]
        weights = write_weights(tmp / "b16.safetensors")
        start = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        startup = time.perf_counter() - start
        try:
            predictor = Predictor(weights)
            runs = {"serial vitpredict": lambda: predictor.predict(paths, batch_size=batch)}
            cpus = ray.cluster_resources()["CPU"]
            for r in replicas:  # one CPU stays free for reading and decoding; the rest is shared out
                each = (cpus - 1) / r
                runs[f"Ray, {r} replica{'s' if r > 1 else ''} x {each:g} CPU"] = (
                    lambda r=r, each=each: predict_dataset(paths, weights, batch_size=batch, replicas=r,
                                                           cpus_per_replica=each).take_all())
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(rounds):  # interleaved, so drift hits all alike
                for name, fn in runs.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        finally:
            ray.shutdown()
    return {"rates": {name: NUM_IMAGES / statistics.median(ts) for name, ts in times.items()},
            "startup": startup, "rounds": rounds, "batch": batch}


def text(result: dict) -> str:
    serial = result["rates"]["serial vitpredict"]
    rows = [["path", "images/s", "vs serial"]]
    rows += [[name, f"{rate:.2f}", f"{rate / serial:.2f}x"] for name, rate in result["rates"].items()]
    return (markdown(rows) + f"\n\n{NUM_IMAGES} images, ViT-B/16 at 224, float32, batch {result['batch']}, median "
            f"of {result['rounds']} round(s). Starting the local Ray took {result['startup']:.1f} s (not in the "
            "rates). Each Ray run includes scheduling its actor pool and loading the model in each replica.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    result = run(args.replicas, args.rounds)
    print(f"machine: {machine()}")
    print(text(result))


if __name__ == "__main__":
    main()
