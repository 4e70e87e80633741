"""`endless watch`: the Python client records a live stream to MP4 and plays a storyboard."""

from __future__ import annotations

import argparse
import json

import av

from client import watch


async def test_watch_records_an_h264_mp4_and_plays_a_storyboard(live_server, tmp_path, capsys):
    """watch --record --storyboard --seconds writes ~24 fps of H.264 and schedules the items."""
    server = await live_server()
    board = tmp_path / "board.json"
    board.write_text(json.dumps([{"at": 1.0, "prompt": "a small blue square in the snow"}]))
    parser = argparse.ArgumentParser()
    watch.add_arguments(parser)
    out = tmp_path / "out.mp4"
    args = parser.parse_args(
        [
            server.ws_url,
            "--prompt",
            "a big red circle bouncing over the ocean",
            "--record",
            str(out),
            "--storyboard",
            str(board),
            "--seconds",
            "3",
        ]
    )
    assert await watch.watch(args) == 0
    printed = capsys.readouterr().out
    assert "created stream" in printed and "(frame 24)" in printed
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
    assert len(frames) >= 48 and (frames[0].width, frames[0].height) == (128, 128)
    seconds = float(frames[-1].pts * stream.time_base)
    assert len(frames) / max(seconds, 1e-9) > 20
