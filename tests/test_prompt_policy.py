"""--prompt-policy: blocked words, phrases and patterns refused as prompt_refused on every
path (create, prompt, storyboard, render), counted, while the stream goes on."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from conftest import timeout
from prometheus_client.parser import text_string_to_metric_families

from client.session import ServerError
from model.errors import ConfigError
from server.cli import main
from server.provenance.policy import PromptPolicy, PromptRefused

POLICY = """\
# colours we do not show
magenta
big red circle
re:\\bcircl(e|ing)\\s+in\\s+the\\s+night\\b
"""
OK = "a small blue square moving left in the snow"


def test_words_phrases_and_patterns_match_case_insensitively_on_word_boundaries():
    """A word matches whole words only, any case; a phrase across any spacing; re: anywhere."""
    p = PromptPolicy.parse(POLICY)
    assert len(p) == 3
    assert p.match("a MAGENTA ring").line == 2
    assert p.match("a Big  Red\tCircle bouncing").line == 3
    assert p.match("a small blue circle circling in the night").line == 4
    assert p.match("a magentas ring") is None  # not the whole word
    assert p.match("a big red square") is None
    assert p.match(OK) is None


def test_check_raises_prompt_refused_naming_the_rule_line_not_the_entry():
    """check() raises PromptRefused (code prompt_refused) with the rule's line number only."""
    with pytest.raises(PromptRefused) as info:
        PromptPolicy.parse(POLICY).check("a magenta ring")
    assert info.value.code == "prompt_refused"
    assert "rule 2" in info.value.message and "magenta" not in info.value.message


def test_fullwidth_letters_do_not_slip_past():
    """Unicode compatibility forms are folded (NFKC) before matching."""
    assert PromptPolicy.parse("magenta").match("a ｍａｇｅｎｔａ ring") is not None


def test_a_bad_regex_or_missing_file_is_a_config_error(tmp_path):
    """A malformed re: entry names its line; an unreadable file is a ConfigError."""
    with pytest.raises(ConfigError, match="line 2"):
        PromptPolicy.parse("ok\nre:(unclosed")
    with pytest.raises(ConfigError):
        PromptPolicy.load(tmp_path / "nope.txt")


async def refused(server) -> float:
    """endless_prompts_refused_total as /metrics serves it."""
    url = server.url + "metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "endless_prompts_refused":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError("no endless_prompts_refused metric")


async def test_refusals_over_the_websocket_while_the_stream_continues(
    live_server, session, tmp_path
):
    """create, prompt and storyboard with a blocked prompt get prompt_refused; each is
    counted; the stream keeps playing to its viewer and accepts an allowed prompt."""
    policy = tmp_path / "policy.txt"
    policy.write_text(POLICY)
    server = await live_server(prompt_policy=str(policy))
    s = await session(server.ws_url)
    with pytest.raises(ServerError) as err:
        await s.create("a magenta circle bouncing over the ocean")
    assert err.value.code == "prompt_refused" and "magenta" not in err.value.message
    created = await s.create(OK)
    stream = created["stream"]
    viewer = await s.watch(stream)
    await viewer.wait_frames(5, timeout(15))
    with pytest.raises(ServerError) as err:
        await s.prompt(stream, "a big red circle moving up in the snow")
    assert err.value.code == "prompt_refused"
    with pytest.raises(ServerError) as err:
        await s.storyboard(stream, [{"at": 0, "prompt": OK}, {"at": 5, "prompt": "a magenta ring"}])
    assert err.value.code == "prompt_refused" and "storyboard item 1" in err.value.message
    seen = viewer.received
    await viewer.wait_frames(seen + 12, timeout(15))  # still playing
    assert (await s.prompt(stream, "a small green triangle moving up in the snow"))["type"] == (
        "prompt_applied"
    )
    assert await refused(server) == 3


def test_render_refuses_a_blocked_prompt_before_generating(tmp_path, capsys):
    """endless render --prompt-policy: a blocked prompt exits 2 with the refusal, no file."""
    policy = tmp_path / "policy.txt"
    policy.write_text(POLICY)
    out = tmp_path / "x.mp4"
    args = ["render", "a magenta ring", "-o", str(out), "--prompt-policy", str(policy)]
    assert main([*args, "--seconds", "1", "--no-c2pa"]) == 2
    assert "prompt policy" in capsys.readouterr().err and not out.exists()
