"""TinyWorld renderer, captions and evaluator (docs/tinyworld.md)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from model.errors import EndlessError, PromptError, StoryboardError, UnknownWordsError
from model.tinyworld import captions, evaluate
from model.tinyworld.render import World, render_clip, render_timeline
from model.tinyworld.spec import (
    ATTRIBUTE_NAMES,
    BACKGROUND_NAMES,
    MOTIONS,
    SHAPES,
    SIZE_NAMES,
    Attributes,
    is_held_out,
    parse_prompt,
)

SIZE = 128


def _timeline(prompts: list[str], seconds_each: float) -> list[tuple[float, str]]:
    return [(i * seconds_each, p) for i, p in enumerate(prompts)]


def _write_mp4(path, frames: np.ndarray, fps: int = 24) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --- renderer ------------------------------------------------------------------------


def test_world_is_deterministic_by_seed():
    """The same seed renders the same frames (and fills unsaid attributes the same)."""
    attrs = Attributes(colour="red")
    a, b, c = (World(attrs, seed, size=64) for seed in (7, 7, 8))
    assert a.attributes == b.attributes
    for _ in range(30):
        fa, fb, fc = a.advance(), b.advance(), c.advance()
        assert np.array_equal(fa, fb)
    assert not np.array_equal(fa, fc)
    assert np.array_equal(World(attrs, 7, size=64).frame(29), fa)


def test_switch_keeps_position_and_velocity():
    """A prompt change keeps the object's position, and its velocity unless motion changed."""
    w = World(Attributes("red", "circle", "big", "bouncing", "ocean"), seed=3)
    for _ in range(40):
        w.advance()
    pos, vel = w.state(40)
    w.set_prompt(Attributes(colour="blue", background="snow"))
    assert w.state(40) == (pos, vel)
    assert w.attributes == Attributes("blue", "circle", "big", "bouncing", "snow")
    w.set_prompt("circling")
    new_pos, new_vel = w.state(40)
    assert np.allclose(new_pos, pos) and not np.allclose(new_vel, vel)
    assert np.hypot(*new_vel) == pytest.approx(2 * np.pi * 0.25 * 0.25)


def test_motions_follow_the_spec():
    """Moving wraps at 0.25 fw/s, bouncing stays wholly inside, circling turns CCW at 0.25/s."""
    w = World(Attributes(motion="moving left", size="small"), seed=1)
    (x0, y0), _ = w.state(0)
    (x1, y1), _ = w.state(24 * 6)
    assert (x0 - x1) % 1.0 == pytest.approx(0.5) and y1 == pytest.approx(y0)
    w = World(Attributes(motion="bouncing", size="big"), seed=2)
    xy = np.array([w.state(i)[0] for i in range(0, 24 * 60, 3)])
    assert xy.min() >= 0.16 - 1e-9 and xy.max() <= 0.84 + 1e-9
    w = World(Attributes(motion="circling"), seed=3)
    xy = np.array([w.state(i)[0] for i in (0, 6, 12)])  # a quarter second apart
    angle = np.arctan2(-(xy[:, 1] - 0.5), xy[:, 0] - 0.5)  # y up: CCW on screen is +
    turn = np.angle(np.exp(1j * np.diff(angle)))
    assert np.allclose(turn, 2 * np.pi * 0.25 * 0.25)
    assert np.allclose(np.hypot(xy[:, 0] - 0.5, xy[:, 1] - 0.5), 0.25)


def test_wrapping_object_is_drawn_across_the_edge():
    """An object over the right edge shows its remainder at the left edge."""
    w = World(Attributes("red", "square", "big", "standing still", "snow"), seed=0, size=SIZE)
    w.set_prompt("moving right")
    x = w.state(0)[0][0]
    frame = w.frame(round((1.0 - x) / 0.25 * 24))  # centre on the right edge
    red = (frame[..., 0] > 200) & (frame[..., 1] < 80)
    assert red[:, :10].sum() > 100 and red[:, -10:].sum() > 100


# --- prompts and captions ------------------------------------------------------------


def test_parse_prompt_ignores_order_case_and_filler():
    """Word order, capitals and filler words do not matter; unknown words are reported."""
    canon = parse_prompt("a big red circle bouncing over the ocean").attributes
    assert parse_prompt("Please show me the OCEAN with a Bouncing big Circle, red").attributes == (
        canon
    )
    assert parse_prompt("a red circle dancing in the jungle").unknown == ("dancing", "jungle")
    # digits and letters outside a-z are words too: reported whole, never dropped
    assert parse_prompt("a red circle 3 times über the snow").unknown == ("3", "times", "über")
    with pytest.raises(UnknownWordsError) as err:
        next(render_timeline([(0, "a red circle dancing")], 1.0, size=32))
    assert err.value.words == ("dancing",)
    with pytest.raises(PromptError):
        parse_prompt("a red blue circle")


def test_sampling_never_shows_held_out_triples():
    """random_attributes and sample_clip (switches included) never yield a held-out triple."""
    rng = np.random.default_rng(0)
    assert len(captions.held_out_triples()) == 21
    for _ in range(2000):
        a = captions.random_attributes(rng)
        assert not is_held_out(a.colour, a.shape, a.background)
    allowed = [captions.random_attributes(rng, allow_held_out=True) for _ in range(500)]
    assert any(is_held_out(a.colour, a.shape, a.background) for a in allowed)
    switches = 0
    for _ in range(300):
        clip = captions.sample_clip(rng, 8, size=16, switch_prob=1.0)
        switches += len(clip.switch_frames)
        assert all(not is_held_out(a.colour, a.shape, a.background) for a in clip.attributes)
    assert switches == 300


def test_captions_follow_the_grammar():
    """Captions always name colour and shape, parse back to the truth, and switch on time."""
    rng = np.random.default_rng(1)
    clip = captions.sample_clip(rng, 48, size=32, switch_prob=1.0)
    assert clip.frames.shape == (48, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert len(clip.captions) == 48 and len(clip.switch_frames) == 1
    f = clip.switch_frames[0]
    assert clip.captions[f] != clip.captions[f - 1]
    for text, truth in zip(clip.captions, clip.attributes, strict=True):
        said = parse_prompt(text).attributes
        assert said.colour == truth.colour and said.shape == truth.shape
        assert said.merged_over(truth) == truth
    prompts = captions.evaluation_prompts(28)
    parsed = [parse_prompt(p).attributes for p in prompts]
    held = [is_held_out(a.colour, a.shape, a.background) for a in parsed]
    assert held == [i % 2 == 0 for i in range(28)]
    for name in ATTRIBUTE_NAMES:
        assert all(getattr(a, name) for a in parsed)


# --- evaluator -----------------------------------------------------------------------


def test_evaluator_reads_renderer_output():
    """Rendered prompts (every word, held-out and seen triples) read back at >= 99%."""
    prompts = captions.evaluation_prompts(28, seed=3)
    parsed = [parse_prompt(p).attributes for p in prompts]
    for name, words in (
        ("shape", SHAPES),
        ("size", SIZE_NAMES),
        ("motion", MOTIONS),
        ("background", BACKGROUND_NAMES),
    ):
        assert {getattr(a, name) for a in parsed} == set(words)
    timeline = _timeline(prompts, 2.0)
    frames = render_timeline(timeline, 2.0 * len(prompts), size=SIZE, seed=5)
    report = evaluate.evaluate_frames(frames, timeline)
    assert report.chunks_scored == 4 * len(prompts)
    assert report.adherence["all"] >= 0.99, report.summary()
    assert report.held_out["all"] >= 0.99 and report.seen["all"] >= 0.99
    assert report.chunks_held_out == report.chunks_seen == 56


def test_evaluator_reads_switches():
    """After a switch the change is visible within a chunk and a kept object does not jump."""
    timeline = [
        (0.0, "a big red circle bouncing over the ocean"),
        (1.6, "sunset"),  # background only
        (3.1, "blue square"),  # object changes
        (4.4, "circling"),  # motion only
        (6.0, "small"),
        (7.7, "moving left in the snow"),
    ]
    frames = render_timeline(timeline, 9.5, size=SIZE, seed=11)
    report = evaluate.evaluate_frames(frames, timeline)
    assert report.adherence["all"] == 1.0, report.summary()
    assert len(report.switches) == 5
    assert all(
        s.chunks_to_visible is not None and s.chunks_to_visible <= 1 for s in report.switches
    )
    jumps = [s.position_jump for s in report.switches]
    assert jumps[1] is None  # colour and shape changed: a new object
    kept = [j for j in jumps if j is not None]
    assert len(kept) == 4 and all(j < 0.03 for j in kept)


def test_wrong_prompt_scores_low():
    """A video rendered for one prompt scores low against a different prompt."""
    frames = render_clip("a big red circle bouncing over the ocean", 4.0, size=SIZE, seed=2)
    wrong = [(0.0, "a small green square moving up in the desert")]
    report = evaluate.evaluate_frames(frames, wrong)
    assert report.adherence["all"] == 0.0
    assert all(v == 0.0 for v in report.adherence.values())
    partly = evaluate.evaluate_frames(frames, [(0.0, "a big red ring bouncing in the ocean")])
    assert partly.adherence["colour"] == 1.0 and partly.adherence["shape"] == 0.0
    assert partly.adherence["all"] == 0.0
    # the confusion table says what was read instead: every chunk's ring is a circle
    chunks = partly.chunks_scored
    assert partly.confusion["shape"] == {"ring": {"circle": chunks}}
    assert partly.confusion["colour"] == {"red": {"red": chunks}}
    assert "shape: ring->circle" in partly.summary()
    assert "colour" not in evaluate.misreadings(partly.confusion)
    assert evaluate.adherence_by_value(partly.confusion)["shape"] == {"ring": 0.0}
    assert evaluate.weakest_values(partly.confusion, top=1) == f"shape ring 0.0% of {chunks}"
    both = evaluate.merge_confusion([partly.confusion, report.confusion])
    assert both["shape"] == {"ring": {"circle": chunks}, "square": {"circle": chunks}}


def test_adherence_is_scored_minute_by_minute():
    """A stream that stops following its prompt after a minute scores 100% then 0%."""
    said = "a big red circle bouncing over the ocean"
    other = "a small green square moving up in the desert"

    def frames():
        yield from render_clip(said, 60.0, size=64, seed=1)
        yield from render_clip(other, 30.0, size=64, seed=1)

    drifted = evaluate.evaluate_frames(frames(), [(0.0, said)])
    assert [m["all"] for m in drifted.adherence_per_minute] == [1.0, 0.0]
    assert drifted.adherence_per_minute[1]["colour"] == 0.0
    assert "adherence per minute: 100.0%, 0.0%" in drifted.summary()
    followed = evaluate.evaluate_frames(frames(), [(0.0, said), (60.0, other)])
    assert [m["all"] for m in followed.adherence_per_minute] == [1.0, 1.0]


def test_adherence_is_scored_by_chunks_since_the_prompt():
    """A switch drawn one chunk (0.5 s) late fails only the first chunk under the new prompt."""
    first = "a big red circle bouncing over the ocean"
    late = render_timeline([(0.0, first), (2.5, "blue")], 4.0, size=64, seed=3)
    report = evaluate.evaluate_frames(late, [(0.0, first), (2.0, "blue")])
    assert report.chunks_since_prompt == [2, 2, 2, 2]  # chunks 0-3 under each prompt
    assert [m["all"] for m in report.adherence_since_prompt] == [0.5, 1.0, 1.0, 1.0]
    assert report.adherence_since_prompt[0]["colour"] == 0.5
    assert report.adherence_since_prompt[0]["background"] == 1.0
    assert "by chunks since the prompt: 50.0%, 100.0%, 100.0%, 100.0%" in report.summary()
    # by asked value: the late blue is read right in 3 of its 4 chunks, red in all of its
    by_value = evaluate.adherence_by_value(report.confusion)
    assert by_value["colour"] == {"red": 1.0, "blue": 0.75}
    assert by_value["motion"] == {"bouncing": 1.0}
    assert evaluate.weakest_values(report.confusion) == "colour blue 75.0% of 4"
    assert "weakest values colour blue 75.0% of 4" in report.summary()


def test_mp4_round_trip_through_cli(tmp_path, capsys):
    """An H.264 yuv420p MP4 decoded back still scores >= 95% via `endless evaluate`."""
    prompts = captions.evaluation_prompts(14, seed=9)
    timeline = _timeline(prompts, 2.0)
    frames = render_clip(timeline, 2.0 * len(prompts), size=SIZE, seed=4)
    video, tl, out = tmp_path / "v.mp4", tmp_path / "t.json", tmp_path / "r.json"
    _write_mp4(video, frames)
    tl.write_text(json.dumps([{"at": at, "prompt": p} for at, p in timeline]))
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    assert evaluate.run(parser.parse_args([str(video), str(tl), "--json", str(out)])) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == len(frames) and report["chunks_scored"] == 4 * len(prompts)
    assert report["adherence"]["all"] >= 0.95, capsys.readouterr().out
    assert "adherence" in capsys.readouterr().out


def test_bad_inputs_raise_clear_errors(tmp_path):
    """Malformed timelines and unreadable videos raise the project's errors."""
    frames = render_clip("red circle", 0.5, size=32)
    with pytest.raises(StoryboardError):
        evaluate.evaluate_frames(frames, [])
    with pytest.raises(StoryboardError):
        evaluate.evaluate_frames(frames, [(1.0, "red"), (0.5, "blue")])
    with pytest.raises(UnknownWordsError):
        evaluate.evaluate_frames(frames, [(0.0, "a purple circle")])
    bad = tmp_path / "t.json"
    for text in (
        '{"at": 0}',
        '[{"at": -1, "prompt": "a red circle"}]',
        '[{"at": 1%s, "prompt": "a red circle"}]' % ("0" * 400),
        '[{"at": 0, "prompt": 7}]',
    ):
        bad.write_text(text)
        with pytest.raises(StoryboardError):
            evaluate.load_timeline(str(bad))
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    bad.write_text('[{"at": 0, "prompt": "a red circle"}]')
    nowhere = str(tmp_path / "no" / "such" / "dir" / "r.json")
    with pytest.raises(EndlessError, match="cannot write the report"):
        evaluate.run(parser.parse_args([str(tmp_path / "v.mp4"), str(bad), "--json", nowhere]))
    not_video = tmp_path / "v.mp4"
    not_video.write_text("not a video")
    with pytest.raises(EndlessError):
        evaluate.read_video(str(not_video))


def test_reader_reads_any_frame_without_failing():
    """Arbitrary frames (noise, translucent blobs of palette colours, as a poorly trained
    model may draw) are read without an exception."""
    from model.tinyworld.evaluate import FrameReader
    from model.tinyworld.spec import COLOURS

    reader = FrameReader(128)
    rng = np.random.default_rng(0)
    palette = np.array(list(COLOURS.values()), np.float32)
    for _ in range(300):
        f = np.empty((128, 128, 3), np.float32)
        f[:] = rng.integers(0, 255, 3)
        for _ in range(rng.integers(1, 6)):
            y, x = rng.integers(0, 128, 2)
            h, w = rng.integers(2, 100, 2)
            a = rng.random()
            f[y : y + h, x : x + w] = (
                a * palette[rng.integers(6)] + (1 - a) * f[y : y + h, x : x + w]
            )
        f += rng.normal(0, rng.random() * 20, f.shape)
        read = reader.read(np.clip(f, 0, 255).astype(np.uint8))
        assert 0 <= read.background < 6
