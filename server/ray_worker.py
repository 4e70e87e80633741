"""The Ray actor of one RayEngine worker (server/engine_ray.py): a model on one GPU and
the GenerationWorker that batches its streams, reached through small calls.

    pid()            the actor's process id (for placement info and fault tests)
    submit(cmd)      an OpenStream (new or from a snapshot) or a ChangePlan
    progress({id: chunk}) / close([id, ...])
    poll(timeout)    the results ready, waiting up to `timeout` s for the first

Polls run in a concurrency group of their own (one thread), so a poll that waits never
holds up a command; commands run one at a time, in the order they were sent, in the
default group.
"""

from __future__ import annotations

import functools
import logging
import os
import queue

from server.engine_child import EngineParams, ModelSource, engine_model, worker_for

log = logging.getLogger(__name__)


class EngineActor:
    def __init__(self, source: ModelSource, params: EngineParams):
        logging.basicConfig(level=params.log_level, format="%(asctime)s ray-worker %(message)s")
        self.worker = worker_for(engine_model(source, params), params)
        self.worker.start()

    def pid(self) -> int:
        return os.getpid()

    def submit(self, command) -> None:
        self.worker.submit_wait(command)

    def progress(self, progress: dict[str, int]) -> None:
        for stream_id, chunk in progress.items():
            self.worker.set_progress(stream_id, chunk)

    def close(self, stream_ids: list[str]) -> None:
        for stream_id in stream_ids:
            self.worker.close_stream(stream_id)

    def poll(self, timeout: float) -> list:
        if not self.worker.alive:  # its thread died: end the actor, the front end moves on
            os._exit(70)
        try:
            first = self.worker.results.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *self.worker.drain()]


@functools.cache
def remote_worker(gpus: float):
    """The EngineActor as a Ray actor class asking for `gpus` (logical) GPUs."""
    import ray

    actor = ray.remote(
        num_gpus=gpus,
        num_cpus=0,
        max_restarts=0,
        concurrency_groups={"poll": 1},  # polls wait beside the default group
    )(EngineActor)
    return actor
