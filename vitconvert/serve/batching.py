"""Dynamic batching: requests that arrive together run through the model as one batch.

Each request's image is decoded and preprocessed on a pool of threads (Pillow and torch release the GIL while
they work), then queued with the forward it needs. One task on the event loop takes the queue's oldest job and
what came with it, up to `max_batch` jobs or until the oldest has waited `max_wait_ms`, and hands the batch to
the one thread that runs the model, so the event loop never waits on a forward and the model never runs two
batches at once. While a batch runs, the next one gathers: under load a batch is full as soon as the model is
free, and a lone request waits at most `max_wait_ms`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..core.errors import VitConvertError

T = TypeVar("T")
# Runs one forward: the key its jobs share and their inputs stacked, (B, 3, H, W), to (B, ...) outputs.
Forward = Callable[[Hashable, torch.Tensor], torch.Tensor]


@dataclass
class _Job:
    key: Hashable  # which forward the job needs; jobs of one batch with different keys run as separate forwards
    inputs: torch.Tensor  # (3, H, W)
    result: asyncio.Future[torch.Tensor]
    queued: float = field(default_factory=time.monotonic)


class Batcher:
    """Collects jobs into batches for `forward`, run in one thread of its own.

    Start it (`start`) inside the event loop that serves the requests; `submit` from request handlers;
    `stop` once the server takes no more requests: it finishes every job queued before stopping.
    `stats()` says how many batches of each size ran.
    """

    def __init__(self, forward: Forward, *, max_batch: int, max_wait_ms: float, decode_threads: int = 2) -> None:
        if max_batch < 1 or max_wait_ms < 0 or decode_threads < 1:
            raise VitConvertError(f"max_batch and decode_threads must be at least 1 and max_wait_ms at least 0, "
                                  f"got {max_batch}, {decode_threads} and {max_wait_ms}")
        self.forward, self.max_batch, self.max_wait = forward, max_batch, max_wait_ms / 1000
        self._decode = ThreadPoolExecutor(decode_threads, thread_name_prefix="vitconvert-decode")
        self._model = ThreadPoolExecutor(1, thread_name_prefix="vitconvert-model")
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sizes: Counter[int] = Counter()  # batch size -> how many ran
        self._waiting: list[_Job] = []  # taken from the queue, not yet run

    def start(self) -> None:
        """Start batching in the running event loop (`submit` does, if no one has: an app mounted in another
        ASGI app gets no lifespan events of its own). A new loop (the app served again) gets a new queue."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.get_loop() is not loop or self._task.done():
            self._queue, self._waiting = asyncio.Queue(), []
            self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        """Run what is queued, then end the batching task (its threads idle; `start` may start it again)."""
        if self._task is not None and self._queue is not None and not self._task.done():
            self._queue.put_nowait(None)
            await self._task

    async def decode(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a decoding thread."""
        return await asyncio.get_running_loop().run_in_executor(self._decode, fn, *args)

    async def submit(self, key: Hashable, inputs: torch.Tensor) -> torch.Tensor:
        """The outputs of `inputs`' row of the forward for `key`, once its batch has run."""
        self.start()
        assert self._queue is not None
        job = _Job(key, inputs, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.result

    def stats(self) -> dict[str, Any]:
        """How the requests were batched: batches run, requests in them, the largest and the mean batch, and
        how many batches of each size."""
        batches = sum(self._sizes.values())
        requests = sum(size * n for size, n in self._sizes.items())
        return {"batches": batches, "requests": requests, "max_batch_seen": max(self._sizes, default=0),
                "mean_batch": requests / batches if batches else 0.0,
                "sizes": {str(size): n for size, n in sorted(self._sizes.items())}}

    async def _run(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping or self._waiting:
            if not self._waiting:
                job = await self._queue.get()
                if job is None:
                    stopping = True
                    continue
                self._waiting.append(job)
            stopping = await self._gather(stopping) or stopping
            batch, self._waiting = self._waiting, []
            await self._run_batch(batch)

    async def _gather(self, stopping: bool) -> bool:
        """Take jobs from the queue into the batch until it is full or its oldest job's wait is over (at
        once when stopping); True if the stop mark came."""
        assert self._queue is not None
        deadline = self._waiting[0].queued + self.max_wait
        while len(self._waiting) < self.max_batch:
            try:
                job = self._queue.get_nowait()  # what came while the last batch ran: no waiting for it
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if stopping or left <= 0:
                    return False
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    return False
            if job is None:
                return True
            self._waiting.append(job)
        return False

    async def _run_batch(self, batch: list[_Job]) -> None:
        groups: dict[Hashable, list[_Job]] = {}
        for job in batch:
            groups.setdefault(job.key, []).append(job)
        loop = asyncio.get_running_loop()
        for key, jobs in groups.items():
            jobs = [job for job in jobs if not job.result.done()]  # a client gone is not waited for
            if not jobs:
                continue
            try:
                outputs = await loop.run_in_executor(self._model, _forward, self.forward, key,
                                                     [job.inputs for job in jobs])
            except Exception as e:  # one batch's failure is its requests' answer, not the server's end
                for job in jobs:
                    if not job.result.done():
                        job.result.set_exception(e)
                continue
            self._sizes[len(jobs)] += 1
            for job, row in zip(jobs, outputs, strict=True):
                if not job.result.done():
                    job.result.set_result(row)


def _forward(forward: Forward, key: Hashable, inputs: list[torch.Tensor]) -> torch.Tensor:
    return forward(key, torch.stack(inputs))
