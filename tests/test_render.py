"""Offline render: MP4 written while generating, storyboards, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from memory.stream import follow_timeline
from model.bundle import VideoModel
from model.errors import RenderError, StoryboardError, UnknownWordsError
from model.storyboard import chunk_at, load_storyboard, parse_storyboard
from server.cli import main
from server.offline import render_video
from server.video_file import read_frames

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> VideoModel:
    return VideoModel.from_seed(0, "micro")


def test_render_writes_an_mp4_that_decodes_to_the_expected_frames(model, tmp_path):
    """A 2.5 s render at 24 fps decodes back to 60 frames of the model's size, each the
    frame the engine generated for that timeline (within H.264's loss)."""
    out = tmp_path / "out.mp4"
    timeline = [(0.0, "a red circle"), (1.0, "a blue ring in the snow")]
    result = render_video(model, timeline, 2.5, out, seed=1)
    frames = list(read_frames(out))
    assert result.frames == 60 and len(frames) == 60
    assert frames[0].shape == (64, 64, 3)
    # the random-init model draws noise, which H.264 keeps only roughly (~17 dB), so each
    # decoded frame is checked to be nearer its own generated frame than to its neighbour
    # or to the same frame of another seed (~14 dB)
    want = list(follow_timeline(model, timeline, 3.0, seed=1))[:60]  # whole chunks
    other_seed = list(follow_timeline(model, timeline, 3.0, seed=2))[:60]
    for k, got in enumerate(frames):
        own = psnr(got, want[k])
        assert own > psnr(got, other_seed[k]) + 1.5
        assert own > psnr(got, want[k - 1 if k else 1]) + 1.5


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-9)))


def test_render_is_deterministic_for_a_seed(model, tmp_path):
    """Two renders with one seed generate the same frames, bit for bit, and write files of
    the same length. (The decoded files are not compared: x264 gave a random-init model's
    noise-like frames different bits on a loaded machine.)"""
    made: dict[str, list[np.ndarray]] = {}
    for name in ("a", "b"):
        made[name] = []
        render_video(
            model,
            [(0.0, "a green square")],
            1.0,
            tmp_path / f"{name}.mp4",
            seed=4,
            mark=lambda frames, n=name: (made[n].append(frames.copy()), frames)[1],
        )
    a, b = np.concatenate(made["a"]), np.concatenate(made["b"])
    assert len(a) == 24 and np.array_equal(a, b)
    assert len(list(read_frames(tmp_path / "a.mp4"))) == len(list(read_frames(tmp_path / "b.mp4")))


def test_switch_times_map_to_the_first_chunk_at_or_after_them():
    """A storyboard time becomes the chunk that starts at or after it."""
    assert chunk_at(0, 24, 12) == 0
    assert chunk_at(20, 24, 12) == 40
    assert chunk_at(20.01, 24, 12) == 41


def test_storyboards_are_validated():
    """Malformed storyboards raise StoryboardError naming the problem."""
    assert parse_storyboard([{"at": 5, "prompt": "b"}, {"at": 0, "prompt": "a"}]) == [
        (0.0, "a"),
        (5.0, "b"),
    ]
    for bad in (
        [],
        {},
        [{"at": -1, "prompt": "x"}],
        [{"at": "0", "prompt": "x"}],
        [{"at": 0}],
        [{"at": 0, "prompt": "a"}, {"at": 0, "prompt": "b"}],
        [{"at": float("nan"), "prompt": "x"}],
        [{"at": 0, "prompt": 3}],
        json.loads('[{"at": 1%s, "prompt": "x"}]' % ("0" * 400)),  # an int no float holds
    ):
        with pytest.raises(StoryboardError):
            parse_storyboard(bad)


def test_a_storyboard_file_that_is_not_text_is_refused_clearly(tmp_path):
    video_given_by_mistake = tmp_path / "story.json"
    video_given_by_mistake.write_bytes(b"\x00\x00\x00\x18ftypmp42\xff\xfe\x80")
    with pytest.raises(StoryboardError, match="not valid JSON"):
        load_storyboard(video_given_by_mistake)


def test_render_rejects_bad_input(model, tmp_path):
    """Bad durations, unknown words and unwritable paths fail before generating."""
    with pytest.raises(RenderError):
        render_video(model, [(0.0, "a red circle")], -1, tmp_path / "x.mp4")
    with pytest.raises(RenderError):
        render_video(model, [(0.0, "a red circle")], 10**9, tmp_path / "x.mp4")
    with pytest.raises(UnknownWordsError):
        render_video(model, [(0.0, "a red circle"), (1.0, "a zebra")], 2, tmp_path / "x.mp4")
    with pytest.raises(RenderError):
        render_video(model, [(0.0, "a red circle")], 1, tmp_path)
    assert not (tmp_path / "x.mp4").exists()  # refused before a file was begun


def test_cli_reports_errors_and_renders_storyboards(tmp_path, capsys):
    """`endless render` exits 2 with a clear message on bad input, 0 on a storyboard."""
    assert (
        main(
            ["render", "a purple circle", "--model", "random:micro", "-o", str(tmp_path / "a.mp4")]
        )
        == 2
    )
    assert "purple" in capsys.readouterr().err
    assert main(["render", "", "--model", "random:micro", "-o", str(tmp_path / "a.mp4")]) == 2
    assert "empty" in capsys.readouterr().err
    bad_interval = ["--guidance", "3", "--guidance-interval", "0.9", "0.2"]
    args = ["render", "a red circle", "--model", "random:micro", *bad_interval]
    assert main([*args, "-o", str(tmp_path / "a.mp4")]) == 2
    assert "guidance interval" in capsys.readouterr().err
    for bad, word in [("--steps", "0"), ("--steps", "-2"), ("--guidance", "nan")]:
        args = ["render", "a red circle", "--model", "random:micro", bad, word, "--quiet"]
        assert main([*args, "-o", str(tmp_path / "b.mp4")]) == 2
        assert bad[2:] + " must be" in capsys.readouterr().err
        assert not (tmp_path / "b.mp4").exists()  # refused before anything was written
    story = tmp_path / "s.json"
    story.write_text(
        json.dumps([{"at": 0, "prompt": "a red circle"}, {"at": 0.5, "prompt": "a cyan ring"}])
    )
    out = tmp_path / "s.mp4"
    assert (
        main(
            [
                "render",
                "--storyboard",
                str(story),
                "--seconds",
                "1",
                "--model",
                "random:micro",
                "--threads",
                "1",
                "--dtype",
                "fp32",
                "--quiet",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert len(list(read_frames(out))) == 24
