"""The sans-I/O core of the live server: playout, prompt plans, scheduling, protocol."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import EndlessError, StoryboardError
from server import protocol
from server.playout import Chunk, Playout, PromptPlan, ticks_per_frame

FPC = 4


def chunk(index: int, epoch: int = 0) -> Chunk:
    frames = np.zeros((FPC, 2, 2, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(index * FPC, (index + 1) * FPC)  # frame index in a pixel
    return Chunk(index, epoch, frames)


def run(p: Playout, ticks: int):
    return [p.step() for _ in range(ticks)]


def test_media_clock_is_90khz_at_24fps():
    """A frame lasts 3750 ticks of the 90 kHz RTP clock at 24 fps."""
    assert ticks_per_frame(24) == 3750
    with pytest.raises(ValueError):
        ticks_per_frame(7)


def test_frames_play_in_order_then_hold_the_last_one_and_count_one_stall():
    """Without new chunks playback repeats the last frame (one stall), then resumes."""
    p = Playout("a red circle", FPC, 24, ahead_chunks=2)
    assert p.step() is None  # nothing generated yet: not started
    p.accept(chunk(0))
    shown = run(p, 6)
    assert [s.index for s in shown] == [0, 1, 2, 3, 3, 3]
    assert [s.tick for s in shown] == list(range(6))  # the clock never stops
    assert [s.held for s in shown] == [False] * 4 + [True] * 2
    assert shown[0].anchor and shown[4].anchor and not shown[5].anchor
    assert p.stalls == 1 and p.held_ticks == 2
    p.accept(chunk(1))
    resumed = p.step()
    assert (resumed.index, resumed.tick, resumed.held, resumed.anchor) == (4, 6, False, True)
    assert resumed.image[0, 0, 0] == 4


def test_pause_holds_without_counting_a_stall():
    """Paused playback holds the frame on screen and is not counted as a stall."""
    p = Playout("a red circle", FPC, 24, ahead_chunks=2)
    p.accept(chunk(0))
    p.accept(chunk(1))
    run(p, 2)
    p.paused = True
    held = run(p, 3)
    assert all(s.held and s.index == 1 for s in held) and p.stalls == 0
    p.paused = False
    assert p.step().index == 2


def test_credit_lets_the_worker_run_ahead_by_a_bounded_number_of_chunks():
    """The worker may generate up to `ahead` chunks past the one playing."""
    p = Playout("a red circle", FPC, 24, ahead_chunks=2)
    assert p.credit() == 3
    for k in range(3):
        p.accept(chunk(k))
    run(p, FPC)
    assert p.play_chunk == 1 and p.credit() == 4


def test_prompt_switch_drops_unplayed_chunks_and_starts_at_first_unplayed_boundary():
    """A switch mid-chunk applies at the next boundary and drops the chunks after it."""
    p = Playout("a red circle", FPC, 24, ahead_chunks=2)
    for k in range(3):
        p.accept(chunk(k))
    run(p, 1)  # frame 0 shown: chunk 0 is partly played
    frame, change = p.set_prompt("a blue square")
    assert frame == FPC and change.rewind_to == 1 and change.epoch == 1
    assert p.frames_dropped == 2 * FPC  # chunks 1 and 2
    assert change.plan == ((0, "a red circle"), (1, "a blue square"))
    assert not p.accept(chunk(2, epoch=0))  # generated under the old prompt: stale
    assert p.accept(chunk(1, epoch=1))
    shown = run(p, FPC)
    assert [s.index for s in shown] == [1, 2, 3, 4]
    assert shown[-1].keyframe and not any(s.keyframe for s in shown[:-1])


def test_chunks_from_any_older_epoch_are_dropped_after_two_quick_switches():
    """After two switches, chunks generated under either old plan past its cut are stale."""
    p = Playout("a red circle", FPC, 24, ahead_chunks=2)
    for k in range(3):
        p.accept(chunk(k))
    run(p, 1)
    p.set_prompt("a blue square")  # cut at chunk 1
    assert p.accept(chunk(1, epoch=1))
    run(p, FPC + 1)  # into chunk 1
    _, change = p.set_prompt("a green ring")  # cut at chunk 2
    assert change.rewind_to == 2 and change.epoch == 2
    assert not p.accept(chunk(2, epoch=0)) and not p.accept(chunk(2, epoch=1))
    assert not p.accept(chunk(1, epoch=2))  # already playing: a duplicate
    assert p.accept(chunk(2, epoch=2))


def test_same_prompt_again_changes_nothing():
    """Sending the prompt already playing neither drops nor rewinds anything."""
    p = Playout("a red circle", FPC, 24, ahead_chunks=2)
    p.accept(chunk(0))
    p.accept(chunk(1))
    frame, change = p.set_prompt("a red circle")
    assert change is None and frame == 0 and p.frames_dropped == 0


def test_storyboard_items_land_on_the_nearest_boundary_not_in_the_past():
    """Storyboard times map to the nearest chunk boundary at or after the play head."""
    p = Playout("a red circle", 12, 24, ahead_chunks=2)
    p.accept(chunk_of_12 := Chunk(0, 0, np.zeros((12, 2, 2, 3), np.uint8)))
    assert chunk_of_12.index == 0
    run(p, 3)
    frames, change = p.set_storyboard([(0.0, "a blue square"), (1.1, "a green ring")])
    assert frames == [12, 24]  # 0 s is already playing: first unplayed boundary
    assert change.rewind_to == 1
    assert change.plan == ((0, "a red circle"), (1, "a blue square"), (2, "a green ring"))


def test_a_new_storyboard_replaces_the_pending_one_but_keeps_typed_prompts():
    """Scheduled entries are replaced by a new storyboard; typed prompts stay."""
    plan = PromptPlan().with_prompt(0, "a").with_storyboard(0, [(3, "b"), (6, "c")])
    plan = plan.with_prompt(2, "typed").with_storyboard(2, [(8, "d")])
    assert plan.as_tuple() == ((0, "a"), (2, "typed"), (8, "d"))
    assert plan.first_difference(PromptPlan().with_prompt(0, "a"), 0) == 2


def test_a_storyboard_that_replaces_one_starting_at_chunk_0_keeps_the_prompt_in_force():
    """A storyboard item at 0 s replaced the opening prompt; a second storyboard from the
    same boundary keeps that prompt until its own first item (no chunk left without one)."""
    p = Playout("a red circle", 12, 24, ahead_chunks=2)
    _, change = p.set_storyboard([(0.0, "a blue square")])
    assert change.plan == ((0, "a blue square"),)
    frames, change = p.set_storyboard([(5.0, "a green ring")])
    assert frames == [120]
    assert change.rewind_to == 10  # nothing before 5 s changes
    assert change.plan == ((0, "a blue square"), (10, "a green ring"))


def test_scheduler_picks_the_stream_with_the_fewest_ready_chunks_then_in_turn():
    """The worker serves the neediest stream first; equal streams take turns."""
    from server.worker import pick

    class S:
        def __init__(self, chunk_index):
            self.chunk_index = chunk_index

    class J:
        def __init__(self, name, chunk_index, play_chunk):
            self.name, self.stream, self.play_chunk = name, S(chunk_index), play_chunk

    a, b, c = J("a", 3, 0), J("b", 1, 0), J("c", 1, 0)
    assert pick([a, b, c], ahead=2, turn=0).name == "b"
    assert pick([a, b, c], ahead=2, turn=2).name == "c"
    assert pick([a], ahead=2, turn=0) is None  # 3 ready = ahead + 1: full


def test_token_bucket_allows_a_burst_then_the_rate():
    """Rate limiting: `burst` requests at once, then `rate` per second."""
    bucket = protocol.TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    assert bucket.take(0.5) and not bucket.take(0.5)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"type": 3}', "bad_message"),
        ('{"type": "launch_rockets"}', "unknown_type"),
        ('{"type": "ping", "pad": "' + "x" * 100 + '"}', "too_big"),
    ],
)
def test_bad_messages_raise_errors_with_stable_codes(raw, code):
    """Each kind of malformed request maps to its documented error code."""
    with pytest.raises(EndlessError) as info:
        protocol.check_type(protocol.decode(raw, max_bytes=64))
    assert info.value.code == code


def test_storyboard_items_are_checked():
    """A storyboard needs a list of {at >= 0, prompt: str} items."""
    assert protocol.storyboard_items({"items": [{"at": 1, "prompt": "a"}]}) == [(1.0, "a")]
    for bad in ([], [{"at": -1, "prompt": "a"}], [{"at": "soon", "prompt": "a"}], [3]):
        with pytest.raises(StoryboardError):
            protocol.storyboard_items({"items": bad})


def test_state_stays_bounded_over_many_switches():
    """Hundreds of switches leave a short plan and a bounded set of remembered epochs."""
    p = Playout("a red circle", FPC, 24, ahead_chunks=2)
    for k in range(400):
        p.accept(chunk(k, epoch=p.epoch))
        run(p, FPC)
        p.set_prompt(["a blue square", "a green ring"][k % 2])
    assert len(p.plan.entries) <= 2 and len(p._cuts) <= 64 and len(p._keyframes) <= 1
    assert p.frames_dropped == 0 and p.stalls == 0
