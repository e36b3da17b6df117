"""The loop's look-ahead: a background thread builds the next steps' micro-batches (a task's
``micro_batch``, for any mode) while the current step trains, in a bounded queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch


class Prefetcher:
    """Builds the micro-batches of steps [start, stop) in a background thread, up to
    ``depth`` ahead and in order, so that reading and decoding shards (pyarrow and numpy
    release the GIL) overlaps the forward/backward. On GPU the tensors are pinned so the
    copy to the device can be asynchronous. An error in the thread is raised by ``get``.

        prefetch = Prefetcher(lambda step, micro: task.micro_batch(step, micro, d), 0, 100, 2)
        batch = prefetch.get()          # step 0 micro 0, then step 0 micro 1, ...
        prefetch.close()
    """

    def __init__(self, make: Callable[[int, int], dict], start: int, stop: int, accum: int,
                 depth: int = 4, pin: bool = False):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(make, start, stop, accum, pin),
                                        daemon=True, name="prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, make, start, stop, accum, pin) -> None:
        try:
            for step in range(start, stop):
                for micro in range(accum):
                    batch = make(step, micro)
                    if pin:
                        batch = {k: v.pin_memory() for k, v in batch.items()}
                    if not self._put(batch):
                        return
        except BaseException as e:  # handed to the consumer, who raises it
            self._put(e)

    def get(self) -> dict[str, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
