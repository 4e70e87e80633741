"""The browser viewer in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
from conftest import timeout

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What a person sees is tested in a real browser; a machine without one is a failure,
# not a skip, unless the run says so (ENDLESS_NO_BROWSER=1, e.g. a laptop without it).
OPTED_OUT = os.environ.get("ENDLESS_NO_BROWSER") == "1"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(OPTED_OUT, reason="ENDLESS_NO_BROWSER=1: real-browser tests opted out"),
]
if not OPTED_OUT:
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError("Debian's chromium is missing: run ./ops/test.sh (it installs it)")
    from playwright import async_api as playwright
FLAGS = [
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain host candidates (aioice)
    "--autoplay-policy=no-user-gesture-required",
]

DECODED = """async () => {
  const stats = await window.endless.pc.getStats();
  let n = 0;
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") n = r.framesDecoded;
  });
  return {decoded: n, time: document.getElementById("video").currentTime};
}"""

SNAPSHOT = """() => {
  const v = document.getElementById("video");
  const c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext("2d");
  g.drawImage(v, 0, 0);
  return Array.from(g.getImageData(0, 0, c.width, c.height).data);
}"""


@pytest.fixture
async def page():
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


async def test_page_plays_the_stream_and_a_typed_prompt_is_acknowledged_and_shown(
    live_server, page
):
    """The page connects by itself, decodes frames, and a typed prompt is applied and seen."""
    server = await live_server()
    await page.goto(server.url)
    ms = timeout(20) * 1000
    await page.wait_for_function("window.endless.pc !== null", timeout=ms)
    await page.wait_for_function("document.getElementById('video').currentTime > 1", timeout=ms)
    first = await page.evaluate(DECODED)
    async with asyncio.timeout(timeout(10)):  # frames keep being decoded, the picture moves
        while True:
            now = await page.evaluate(DECODED)
            if now["decoded"] >= first["decoded"] + 24 and now["time"] > first["time"] + 0.5:
                break
            await asyncio.sleep(0.1)
    assert "?stream=" in page.url and len(server.streams) == 1
    before = await page.evaluate(SNAPSHOT)

    await page.fill("#prompt", "a small blue square moving left in the snow")
    await page.click("#send")
    await page.wait_for_function("window.endless.applied.length === 1", timeout=ms)
    applied = await page.evaluate("window.endless.applied[0]")
    assert applied["type"] == "prompt_applied" and applied["frame"] % 12 == 0
    assert "Applied" in await page.inner_text("#message")
    await page.wait_for_function("window.endless.switchLatency !== null", timeout=ms)
    assert await page.evaluate("window.endless.shownFrame") >= applied["frame"]
    after = await page.evaluate(SNAPSHOT)
    assert after != before
    live = next(iter(server.streams.values()))
    assert live.playout.plan.prompt_at(applied["frame"] // 12) == applied["prompt"]
    await page.wait_for_function(
        "document.getElementById('stat-cache').textContent.includes('MiB')", timeout=ms
    )


async def test_page_reports_unknown_words_clearly(live_server, page):
    """A prompt with unknown words shows them in the page, and the video keeps playing."""
    server = await live_server()
    await page.goto(server.url)
    ms = timeout(20) * 1000
    await page.wait_for_function("window.endless.viewer !== null", timeout=ms)
    await page.fill("#prompt", "a glittering unicorn circle")
    await page.click("#send")
    await page.wait_for_function("window.endless.errors.length === 1", timeout=ms)
    message = await page.inner_text("#message")
    assert "Unknown words" in message and "glittering" in message and "unicorn" in message
    assert await page.get_attribute("#message", "data-code") == "unknown_words"
    t0 = (await page.evaluate(DECODED))["time"]
    await page.wait_for_function(
        f"document.getElementById('video').currentTime > {t0 + 0.5}", timeout=ms
    )


CONTROLS = ["#pause", "#stop", "#prompt", "#send", "#add-item", "#play-storyboard",
            "#storyboard", "#share-control"]  # fmt: skip


async def shared_link(page, button: str) -> str:
    """Click a share button on the page and read the link it offers."""
    await page.click(button)
    await page.wait_for_function("document.getElementById('share-link').value !== ''")
    return await page.input_value("#share-link")


async def test_the_share_link_page_plays_the_stream_and_has_no_controls(live_server, page):
    """ "share this stream" gives /?stream=ID&view=TOKEN; that page joins the same stream
    (one encode for both), plays it, shows no control at all, and the server refuses it
    control; the creator's address bar holds no token."""
    server = await live_server()
    await page.goto(server.url)
    ms = timeout(20) * 1000
    await page.wait_for_function("window.endless.viewer !== null", timeout=ms)
    (live,) = server.streams.values()
    assert live.control_token not in page.url and live.view_token not in page.url
    assert await page.evaluate("window.endless.role") == "control"
    link = await shared_link(page, "#share")
    assert link == f"{server.url}?stream={live.id}&view={live.view_token}"

    viewer = await page.context.browser.new_page()
    await viewer.goto(link)
    await viewer.wait_for_function("document.getElementById('video').currentTime > 0.5", timeout=ms)
    assert await viewer.evaluate("window.endless.role") == "view"
    for selector in CONTROLS:
        assert await viewer.locator(selector).count() == 0, selector
    visible = await viewer.evaluate(
        """() => [...document.querySelectorAll("button, input, textarea, select")]
            .filter((el) => el.offsetParent !== null).map((el) => el.id)"""
    )
    assert visible == ["share"]  # its own view link, to pass on; nothing that steers
    refused = await viewer.evaluate(
        "onStream('prompt', {text: 'a small blue square'}).catch((err) => err.code)"
    )
    assert refused == "forbidden"
    assert len(server.streams) == 1 and len(live.viewers) == 2 and len(live.encoders) == 1


async def test_the_share_control_link_page_can_steer_the_stream(live_server, page):
    """ "share control" gives /?stream=ID&control=TOKEN; that page has the controls, and a
    prompt typed there is applied to the creator's stream."""
    server = await live_server()
    await page.goto(server.url)
    ms = timeout(20) * 1000
    await page.wait_for_function("window.endless.viewer !== null", timeout=ms)
    (live,) = server.streams.values()
    link = await shared_link(page, "#share-control")
    assert link == f"{server.url}?stream={live.id}&control={live.control_token}"

    narrator = await page.context.browser.new_page()
    await narrator.goto(link)
    await narrator.wait_for_function("window.endless.viewer !== null", timeout=ms)
    assert await narrator.evaluate("window.endless.role") == "control"
    assert await narrator.locator("#prompt").is_visible()
    await narrator.fill("#prompt", "a small blue square moving left in the snow")
    await narrator.click("#send")
    await narrator.wait_for_function("window.endless.applied.length === 1", timeout=ms)
    applied = await narrator.evaluate("window.endless.applied[0]")
    assert live.playout.plan.prompt_at(applied["frame"] // 12) == applied["prompt"]
    # the co-narrator can pass the stream on too: its view link is the creator's
    assert (
        await shared_link(narrator, "#share")
        == f"{server.url}?stream={live.id}&view={live.view_token}"
    )
    assert list(server.streams) == [live.id]


async def test_a_link_with_a_wrong_token_says_so_and_starts_nothing(live_server, page):
    """A link to a live stream with a forged token gets no video, says why, and creates
    no stream of its own."""
    server = await live_server()
    await page.goto(server.url)
    ms = timeout(20) * 1000
    await page.wait_for_function("window.endless.stream !== null", timeout=ms)
    (live,) = server.streams.values()
    forged = await page.context.browser.new_page()
    await forged.goto(f"{server.url}?stream={live.id}&view=forged-token")
    await forged.wait_for_function(
        "document.getElementById('message').textContent.includes('no valid token')", timeout=ms
    )
    assert await forged.evaluate("window.endless.viewer") is None
    assert list(server.streams) == [live.id] and len(live.viewers) == 1


async def test_a_page_opened_on_an_ended_stream_starts_a_new_one(live_server, page):
    """A shared link to a stream that has ended does not leave the page stuck: it says so,
    creates a new stream, plays it, and puts the new id in its address."""
    server = await live_server()
    await page.goto(server.url + "?stream=deadbeef")
    ms = timeout(20) * 1000
    await page.wait_for_function("document.getElementById('video').currentTime > 0.5", timeout=ms)
    (live,) = server.streams.values()
    assert await page.evaluate("window.endless.stream") == live.id
    assert f"stream={live.id}" in page.url
    assert "deadbeef has ended" in await page.inner_text("#message")


async def test_the_page_reconnects_and_rejoins_its_stream_after_the_connection_drops(
    live_server, page
):
    """When the websocket drops, the page reconnects by itself, rejoins the same stream and
    watches it again with a new viewer; the video plays on."""
    server = await live_server(grace_seconds=10)
    await page.goto(server.url)
    ms = timeout(20) * 1000
    await page.wait_for_function("window.endless.viewer !== null", timeout=ms)
    stream, viewer = await page.evaluate("[window.endless.stream, window.endless.viewer]")
    for conn in list(server.connections):
        await conn.ws.close()
    await page.wait_for_function(
        f"window.endless.viewer !== null && window.endless.viewer !== {viewer!r}", timeout=ms
    )
    t0 = (await page.evaluate(DECODED))["time"]
    await page.wait_for_function(
        f"document.getElementById('video').currentTime > {t0 + 0.5}", timeout=ms
    )
    assert await page.evaluate("window.endless.stream") == stream
    assert list(server.streams) == [stream] and len(server.streams[stream].viewers) == 1


async def test_on_a_keyed_server_the_page_creates_with_key_in_its_url_and_drops_it(
    live_server, page
):
    """On a server with an API key, / says the key is needed and starts nothing, while
    /?key=KEY creates and plays a stream and leaves no key in the address bar."""
    server = await live_server(api_keys=("the-key",))
    ms = timeout(20) * 1000
    await page.goto(server.url)
    await page.wait_for_function(
        "document.getElementById('message').textContent.includes('API key')", timeout=ms
    )
    assert not server.streams
    await page.goto(server.url + "?key=the-key")
    await page.wait_for_function("document.getElementById('video').currentTime > 0.5", timeout=ms)
    assert len(server.streams) == 1 and "the-key" not in page.url
