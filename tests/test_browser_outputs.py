"""Outputs in a real headless Chromium: a WHEP client we did not write (npm whip-whep), the
OBS page (/play), and hls.js playing the HLS playlist."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from conftest import timeout
from test_browser import CHROMIUM, FLAGS, OPTED_OUT, pytestmark  # noqa: F401

if not OPTED_OUT:
    from playwright import async_api as playwright

JS = Path(__file__).parent / "js" / "node_modules"
WHEP_JS = JS / "whip-whep" / "whep.js"
HLS_JS = JS / "hls.js" / "dist" / "hls.min.js"

FRAMES = """async (pc) => {
  let n = 0;
  (await pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") n = r.framesDecoded || 0;
  });
  return n;
}"""

PROMPT = "a big red circle bouncing over the ocean"


def _script(path: Path) -> str:
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run ./ops/setup.sh --test (npm ci in tests/js)")
    return path.read_text()


@pytest.fixture
async def browser():
    async with playwright.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            await b.close()


async def _stream(live_server, session, **config):
    server = await live_server(**config)
    s = await session(server.ws_url)
    return server, s, await s.create(PROMPT)


async def test_whip_whep_client_in_chromium_decodes_frames_over_whep(live_server, session, browser):
    """npm whip-whep's WHEPClient, from another origin (CORS preflight, trickle PATCH),
    gets 201 and decodes frames of the stream; its stop() DELETEs the session."""
    server, _, created = await _stream(live_server, session)
    page = await browser.new_page()
    await page.add_script_tag(
        content=_script(WHEP_JS) + "\nwindow.WHEPClient = WHEPClient;", type="module"
    )
    await page.wait_for_function("window.WHEPClient !== undefined")
    url = f"{server.url}whep/{created['stream']}"
    t0 = time.monotonic()
    await page.evaluate(
        """async ([url, token]) => {
          const pc = new RTCPeerConnection();
          pc.addTransceiver("video", {direction: "recvonly"});
          window.pc = pc;
          window.whep = new WHEPClient();
          await window.whep.view(pc, url, token);
        }""",
        [url, created["view_token"]],
    )
    await page.wait_for_function(
        f"({FRAMES})(window.pc).then((n) => n > 0)", timeout=timeout(20) * 1000, polling=50
    )
    first_frame_s = time.monotonic() - t0
    (live,) = server.streams.values()
    assert len(live.viewers) == 1 and len(server.outputs.whep.sessions) == 1
    n0 = await page.evaluate(f"({FRAMES})(window.pc)")
    await asyncio.sleep(1.0)
    assert await page.evaluate(f"({FRAMES})(window.pc)") > n0 + 10  # frames keep coming
    await page.evaluate("window.whep.stop()")
    async with asyncio.timeout(timeout(10)):
        while live.viewers or server.outputs.whep.sessions:
            await asyncio.sleep(0.05)
    print(f"WHEP (whip-whep in Chromium): first decoded frame after {first_frame_s:.2f} s")


async def test_obs_page_plays_without_controls_and_reconnects_after_the_peer_drops(
    live_server, session, browser
):
    """/play/<stream>?view=TOKEN shows only a muted autoplaying video that decodes frames;
    when the server drops its peer it connects again by itself and plays on."""
    server, _, created = await _stream(live_server, session)
    page = await browser.new_page()
    stream, token = created["stream"], created["view_token"]
    t0 = time.monotonic()
    async with page.expect_response(lambda r: "/play/" in r.url) as answer:
        await page.goto(f"{server.url}play/{stream}?view={token}")
    assert (await answer.value).status == 200
    ms = timeout(20) * 1000
    await page.wait_for_function(
        f"window.endlessPlayer.pc && ({FRAMES})(window.endlessPlayer.pc).then((n) => n > 0)",
        timeout=ms,
    )
    first_frame_s = time.monotonic() - t0
    tags = await page.evaluate("[...document.body.querySelectorAll('*')].map((e) => e.tagName)")
    assert [t for t in tags if t != "SCRIPT"] == ["VIDEO"]
    video = await page.evaluate(
        "(() => { const v = document.querySelector('video');"
        " return [v.muted, v.autoplay, v.controls]; })()"
    )
    assert video == [True, True, False]
    (live,) = server.streams.values()
    async with asyncio.timeout(timeout(10)):  # the page may be between two of its peers
        while len(live.viewers) != 1:
            await asyncio.sleep(0.05)
    (viewer_id,) = live.viewers
    t1 = time.monotonic()
    await live.remove_viewer(viewer_id, "dropped by the test")
    await page.wait_for_function("window.endlessPlayer.connects >= 2", timeout=ms)
    await page.wait_for_function(
        f"({FRAMES})(window.endlessPlayer.pc).then((n) => n > 0)", timeout=ms, polling=50
    )
    back_s = time.monotonic() - t1
    await page.wait_for_function(
        f"({FRAMES})(window.endlessPlayer.pc).then((n) => n > 5)", timeout=ms
    )
    assert len(live.viewers) == 1 and viewer_id not in live.viewers
    print(
        f"OBS page: first frame {first_frame_s:.2f} s after navigation, "
        f"frames again {back_s:.2f} s after its peer was dropped"
    )


async def test_obs_page_refuses_a_wrong_view_token(live_server, session, browser):
    """A wrong token gets 403 and no viewer is made."""
    server, _, created = await _stream(live_server, session)
    page = await browser.new_page()
    response = await page.goto(f"{server.url}play/{created['stream']}?view=wrong")
    assert response.status == 403
    (live,) = server.streams.values()
    assert live.viewers == {}


async def test_hls_js_in_chromium_plays_the_live_playlist(live_server, session, browser):
    """hls.js (npm) in Chromium, on another origin, plays the live playlist: the video's
    currentTime advances; how far it plays behind the live edge is printed."""
    server, _, created = await _stream(live_server, session)
    page = await browser.new_page()
    await page.add_script_tag(content=_script(HLS_JS))
    url = f"{server.url}hls/{created['stream']}/index.m3u8?token={created['view_token']}"
    await page.evaluate(
        """(url) => {
          const v = document.createElement("video");
          v.muted = true; v.autoplay = true;
          document.body.appendChild(v);
          window.hls = new Hls({liveSyncDurationCount: 2});
          window.hls.loadSource(url);
          window.hls.attachMedia(v);
          window.video = v;
        }""",
        url,
    )
    ms = timeout(30) * 1000
    await page.wait_for_function("Hls.isSupported() && window.video.currentTime > 0.5", timeout=ms)
    t0 = await page.evaluate("window.video.currentTime")
    await asyncio.sleep(2.0)
    t1 = await page.evaluate("window.video.currentTime")
    assert t1 > t0 + 1.0
    behind = await page.evaluate("window.hls.latency")
    print(f"HLS (hls.js in Chromium): {behind:.2f} s behind the playlist's live edge")
