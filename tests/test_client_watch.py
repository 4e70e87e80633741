"""`endless watch`: the Python client records a live stream to MP4 and plays a storyboard."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import re
import subprocess
import sys

import av
import pytest
from conftest import timeout

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
    (token,) = re.findall(r"control token \(steers\): (\S+)", printed)
    (view,) = re.findall(r"view token \(share to watch\): (\S+)", printed)
    assert len(token) == len(view) == 43 and token != view
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
        time_base = stream.time_base  # PyAV 18: a closed container's streams refuse reads
    assert len(frames) >= 48 and (frames[0].width, frames[0].height) == (128, 128)
    seconds = float(frames[-1].pts * time_base)
    assert len(frames) / max(seconds, 1e-9) > 20


async def test_watch_in_a_terminal_sends_typed_prompts_and_exits_on_time(live_server):
    """With a terminal on stdin, each typed line is sent as a prompt, and the command ends
    after --seconds even though nobody presses Enter again (the line reader must not be a
    thread the interpreter waits for at exit)."""
    server = await live_server()
    main_fd, terminal = pty.openpty()
    # subprocess.Popen, not the loop's subprocess_exec: uvloop runs Python's after-fork
    # hooks in the child, which can crash in a process full of torch and aiortc threads
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from server.cli import main; sys.exit(main())"]
        + ["watch", server.ws_url, "--seconds", "4"],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    os.close(terminal)
    try:
        printed = b""
        async with asyncio.timeout(timeout(30)):
            while b"watching" not in printed:
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line, (printed, proc.poll())
                printed += line
            os.write(main_fd, b"a small blue square in the snow\n")
            printed += await asyncio.to_thread(proc.stdout.read)
            assert await asyncio.to_thread(proc.wait) == 0
    finally:
        os.close(main_fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"prompt applied from frame" in printed and b"received" in printed, printed


async def test_an_unreachable_or_malformed_server_url_is_a_clear_error():
    from client.session import LiveSession
    from model.errors import EndlessError

    for url in ("ws://127.0.0.1:1/ws", "http://not-a-websocket-url"):
        with pytest.raises(EndlessError, match="cannot connect to"):
            await LiveSession(url).connect(timeout(5))


async def test_a_long_watch_keeps_bounded_events_and_frames(live_server):
    """With max_events and history the client keeps only recent events and frames (a watch
    may last hours) while counting all of them, and waiting on events still works."""
    from client.session import LiveSession

    server = await live_server(stats_seconds=0.05)
    async with LiveSession(server.ws_url, max_events=5) as s:
        stream = (await s.create("a big red circle bouncing over the ocean"))["stream"]
        viewer = await s.watch(stream, keep_images=False, history=3)
        frames = await viewer.wait_frames(30, timeout(20))
        assert viewer.received >= 30 and len(frames) == len(viewer.frames) == 3
        seen = s.event_count
        later = await s.wait_event(lambda e: e["type"] == "stats", timeout(5), start=seen)
        assert s.event_count > 5 >= len(s.events) and later in s.events


async def test_watch_joins_with_a_token_and_a_view_token_cannot_prompt(
    live_server, session, capsys
):
    """`endless watch --stream ID --token VIEW` joins and receives frames as a viewer;
    with --prompt the view token is refused ("forbidden")."""
    from client.session import ServerError

    server = await live_server(grace_seconds=10)
    owner = await session(server.ws_url)
    created = await owner.create("a big red circle bouncing over the ocean")
    parser = argparse.ArgumentParser()
    watch.add_arguments(parser)
    base = [server.ws_url, "--stream", created["stream"], "--token", created["view_token"]]
    assert await watch.watch(parser.parse_args([*base, "--seconds", "1.5"])) == 0
    printed = capsys.readouterr().out
    assert f"joined stream {created['stream']} (view token)" in printed
    assert int(re.search(r"received (\d+) frames", printed).group(1)) > 0
    assert server.streams[created["stream"]].playout.plan.prompt_at(10**6).startswith("a big red")
    with pytest.raises(ServerError) as info:
        await watch.watch(parser.parse_args([*base, "--prompt", "a small blue square"]))
    assert info.value.code == "forbidden"
