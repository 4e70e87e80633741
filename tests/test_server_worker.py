"""The model worker thread with the real engine, without an event loop."""

from __future__ import annotations

import queue
import time

import numpy as np
from conftest import timeout

from memory.stream import Stream
from server.playout import Playout
from server.worker import ChangePlan, ChunkReady, GenerationWorker, OpenStream, StreamOpened

A = "a big red circle bouncing over the ocean"
B = "a small blue square moving left in the snow"


def next_result(worker: GenerationWorker, wait: float = 10.0):
    return worker.results.get(timeout=timeout(wait))


def test_worker_runs_ahead_by_a_bounded_buffer_and_a_switch_regenerates_like_offline(
    tiny_model,
):
    """The worker stops `ahead` chunks past playback; after a switch its chunks equal an
    offline Stream whose prompt changes at the same chunk (rewind is exact)."""
    worker = GenerationWorker(tiny_model, 2, 8, 8, 1, notify=lambda: None)
    worker.start()
    try:
        assert worker.submit(OpenStream("s", A, 0))
        opened = next_result(worker)
        assert isinstance(opened, StreamOpened) and opened.frames_per_chunk == 12
        play = Playout(A, 12, 24, ahead_chunks=2)
        got = {}
        for _ in range(3):
            ready = next_result(worker)
            assert isinstance(ready, ChunkReady) and play.accept(ready.chunk)
            got[ready.chunk.index] = ready.chunk.frames
        assert sorted(got) == [0, 1, 2]
        try:  # chunk 0 playing, 2 ahead: the worker must wait for playback
            extra = worker.results.get(timeout=0.5)
            raise AssertionError(f"generated past the buffer: {extra}")
        except queue.Empty:
            pass
        play.step()  # frame 0 on screen: the first unplayed boundary is chunk 1
        frame, change = play.set_prompt(B)
        assert frame == 12 and change.rewind_to == 1
        assert worker.submit(ChangePlan("s", change))
        worker.set_progress("s", play.play_chunk)
        for _ in range(2):
            ready = next_result(worker)
            assert play.accept(ready.chunk)
            got[ready.chunk.index] = ready.chunk.frames
    finally:
        assert worker.stop(timeout(10))
    offline = Stream(tiny_model, A, seed=0)
    expected = [offline.next_chunk()]
    offline.set_prompt(B, at_chunk=1)
    expected += [offline.next_chunk(), offline.next_chunk()]
    for k in range(3):
        assert np.array_equal(got[k], expected[k])


def test_a_full_command_queue_refuses_instead_of_blocking(tiny_model):
    """When the command queue is full, submit returns False at once (the loop never waits)."""
    worker = GenerationWorker(tiny_model, 2, 1, 1, 1, notify=lambda: None)  # not started
    assert worker.can_submit() and worker.submit(OpenStream("a", A, 0))
    assert not worker.can_submit() and not worker.submit(OpenStream("b", A, 0))


def test_a_switch_arriving_mid_chunk_still_regenerates_exactly(tiny_model):
    """A plan change that lands while a chunk is being generated (abandoned or finished
    and dropped) still leaves the stream equal to the offline timeline."""
    worker = GenerationWorker(tiny_model, 2, 8, 8, 1, notify=lambda: None)
    worker.start()
    play = Playout(A, 12, 24, ahead_chunks=2)
    got = {}
    try:
        worker.submit(OpenStream("s", A, 0))
        next_result(worker)
        for _ in range(3):
            ready = next_result(worker)
            play.accept(ready.chunk)
        for _ in range(12):  # chunk 0 shown: chunk 3 may now be generated
            play.step()
        worker.set_progress("s", play.play_chunk)
        time.sleep(0.06)  # chunk 3 is under way
        frame, change = play.set_prompt(B)
        assert frame == 12 and change.rewind_to == 1
        worker.submit(ChangePlan("s", change))
        while len(got) < 3:
            ready = next_result(worker)
            if play.accept(ready.chunk):
                got[ready.chunk.index] = ready.chunk.frames
    finally:
        assert worker.stop(timeout(10))
    offline = Stream(tiny_model, A, seed=0)
    offline.next_chunk()
    offline.set_prompt(B, at_chunk=1)
    for k in (1, 2, 3):
        assert np.array_equal(got[k], offline.next_chunk())


def test_a_warm_stream_is_warmed_a_chunk_a_turn_and_shows_what_offline_shows(tiny_model):
    """With warmup_chunks=2 a scheduler turn on a cold stream makes one warm-up chunk and
    delivers nothing (so the turns of other streams come between), the third turn
    delivers chunk 0; run by the worker thread, chunks 0 and 1 equal an offline
    Stream's."""
    tiny_model.with_sampler(warmup_chunks=2)
    try:
        turns = GenerationWorker(tiny_model, 2, 8, 8, 1, notify=lambda: None)
        turns._open(OpenStream("warm", A, 0))
        assert isinstance(turns.results.get_nowait(), StreamOpened)
        job = turns._jobs[0]
        for left in (True, False):
            turns._generate(job)
            assert turns.results.empty() and job.stream.warming is left
        turns._generate(job)
        assert turns.results.get_nowait().chunk.index == 0
        worker = GenerationWorker(tiny_model, 2, 8, 8, 1, notify=lambda: None)
        worker.start()
        try:
            assert worker.submit(OpenStream("warm", A, 0))
            got = [next_result(worker) for _ in range(3)][1:]
        finally:
            assert worker.stop(timeout(10))
        offline = Stream(tiny_model, A, seed=0)
        expected = [offline.next_chunk(), offline.next_chunk()]
    finally:
        tiny_model.with_sampler(warmup_chunks=0)
    assert [r.chunk.index for r in got] == [0, 1]
    assert all(np.array_equal(r.chunk.frames, e) for r, e in zip(got, expected, strict=True))


def test_a_batching_worker_gives_each_stream_its_offline_frames_and_switches_exactly(
    tiny_model,
):
    """With max_batch 3, three streams' chunks are made in shared forward passes (the
    chunk timings say so), each stream's frames equal its offline Stream's, and a switch
    on one of them regenerates from its chunk like offline."""
    prompts = {"a": A, "b": B, "c": "a big yellow triangle circling in the desert"}
    worker = GenerationWorker(tiny_model, 1, 16, 32, 1, notify=lambda: None, max_batch=3)
    worker.start()
    got: dict[str, dict[int, np.ndarray]] = {k: {} for k in prompts}
    batched = 0
    try:
        for i, (k, p) in enumerate(prompts.items()):
            assert worker.submit(OpenStream(k, p, i))
        plays = {k: Playout(p, 12, 24, ahead_chunks=1) for k, p in prompts.items()}
        switched = False
        deadline = time.monotonic() + timeout(60)
        while any(len(g) < 4 for g in got.values()) and time.monotonic() < deadline:
            r = next_result(worker, 30)
            if isinstance(r, StreamOpened):
                continue
            assert isinstance(r, ChunkReady)
            if not plays[r.stream_id].accept(r.chunk):
                continue
            got[r.stream_id][r.chunk.index] = r.chunk.frames
            batched += r.ms.get("batch", 1) > 1
            if r.stream_id == "b" and r.chunk.index == 1 and not switched:
                plays["b"].step()
                _, change = plays["b"].set_prompt(A)
                assert change.rewind_to == 1
                got["b"].pop(1)
                assert worker.submit(ChangePlan("b", change))
                switched = True
            worker.set_progress(r.stream_id, max(got[r.stream_id]))
    finally:
        assert worker.stop(timeout(10))
    assert switched and batched > 0
    for i, (k, p) in enumerate(prompts.items()):
        offline = Stream(tiny_model, p, seed=i)
        for c in range(4):
            if k == "b" and c == 1:
                offline.set_prompt(A, at_chunk=1)
            expected = offline.next_chunk()
            assert np.abs(got[k][c].astype(int) - expected.astype(int)).max() <= 1, (k, c)


def test_chunks_carry_the_snapshot_an_open_restores_from(tiny_model):
    """Each chunk comes with the stream's snapshot after it; an OpenStream carrying that
    snapshot, plan and epoch continues at the next chunk (after a re-cache) with the
    chunks a Stream restored from it makes, and replaces a stream of the same id."""
    from memory.snapshot import StreamSnapshot

    worker = GenerationWorker(tiny_model, 2, 8, 8, 1, notify=lambda: None)
    worker._open(OpenStream("s", A, 0))
    worker.results.get_nowait()
    for _ in range(3):
        worker._generate(worker._jobs[0])
    last = [worker.results.get_nowait() for _ in range(3)][-1]
    assert last.chunk.index == 2 and last.snapshot is not None
    plan = ((0, A), (3, B))
    worker._open(OpenStream("s", A, 0, last.snapshot, plan, epoch=4, play_chunk=2))
    opened = worker.results.get_nowait()
    assert isinstance(opened, StreamOpened) and opened.chunk == 3
    assert len(worker._jobs) == 1
    worker._generate(worker._jobs[0])
    ready = worker.results.get_nowait()
    assert (ready.chunk.index, ready.chunk.epoch) == (3, 4)
    expected = Stream.restore(tiny_model, StreamSnapshot.from_bytes(last.snapshot))
    expected.set_prompt(B, at_chunk=3)
    assert np.array_equal(ready.chunk.frames, expected.next_chunk())


def test_a_lone_stream_runs_on_the_solo_threads_and_two_on_the_usual(tiny_model, monkeypatch):
    """solo_threads: with one stream on, its chunks run on that many torch threads (first,
    then on whichever count measures faster); once a second stream opens, chunks go back
    to torch_threads; the frames stay the offline ones (within a level: the sums run in
    another order)."""
    import torch

    from server import worker as worker_module

    seen: list[tuple[int, int]] = []  # (streams on, torch threads) at each denoise
    real = worker_module.denoise_together

    def recording(pairs, superseded):
        seen.append((len(worker._jobs), torch.get_num_threads()))
        return real(pairs, superseded)

    monkeypatch.setattr(worker_module, "denoise_together", recording)
    worker = GenerationWorker(tiny_model, 1, 8, 16, 1, notify=lambda: None, solo_threads=2)
    worker.start()
    got: dict[str, dict[int, np.ndarray]] = {"a": {}, "b": {}}
    try:
        assert worker.submit(OpenStream("a", A, 0))
        while len(got["a"]) < 2:
            r = next_result(worker)
            if isinstance(r, ChunkReady):
                got["a"][r.chunk.index] = r.chunk.frames
        assert worker.submit(OpenStream("b", B, 1))
        worker.set_progress("a", 1)
        while len(got["b"]) < 2 or len(got["a"]) < 3:
            r = next_result(worker, 30)
            if isinstance(r, ChunkReady):
                got[r.stream_id][r.chunk.index] = r.chunk.frames
                worker.set_progress(r.stream_id, max(got[r.stream_id]))
    finally:
        assert worker.stop(timeout(10))
    assert seen[0] == (1, 2) and (2, 1) in seen
    assert all(threads == 1 for streams, threads in seen if streams == 2)
    assert set(worker.thread_choice.seconds) <= {1, 2} and 2 in worker.thread_choice.seconds
    for k, (prompt, seed) in {"a": (A, 0), "b": (B, 1)}.items():
        offline = Stream(tiny_model, prompt, seed=seed)
        for c in sorted(got[k]):
            expected = offline.next_chunk()
            assert np.abs(got[k][c].astype(int) - expected.astype(int)).max() <= 1, (k, c)
