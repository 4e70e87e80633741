"""ThreadChoice: a lone stream's thread count follows what measures faster."""

from __future__ import annotations

from server.thread_choice import ThreadChoice


def run(choice: ThreadChoice, cost: dict[int, float], chunks: int) -> list[int]:
    picked = []
    for _ in range(chunks):
        n = choice.pick()
        choice.record(n, cost[n])
        picked.append(n)
    return picked


def test_it_tries_both_then_keeps_the_faster_and_probes_the_other_now_and_then():
    choice = ThreadChoice(usual=1, solo=2, probe_every=8)
    picked = run(choice, {1: 0.03, 2: 0.02}, 32)
    assert picked[:2] == [2, 1]  # solo first, then the usual count: both measured
    assert picked.count(1) == 1 + 32 // 8  # the first look, then one probe in 8 chunks
    assert choice.best() == 2


def test_when_the_solo_count_turns_slow_it_goes_back_and_returns_when_it_recovers():
    choice = ThreadChoice(usual=1, solo=2, probe_every=8)
    run(choice, {1: 0.03, 2: 0.02}, 16)
    crowded = run(choice, {1: 0.035, 2: 0.09}, 24)  # another process took a core
    assert crowded[-16:].count(2) <= 2  # only the probes run on two threads
    assert choice.best() == 1
    quiet = run(choice, {1: 0.03, 2: 0.02}, 24)  # it left: a probe sees two threads pay
    assert choice.best() == 2 and quiet[-8:].count(2) >= 7


def test_one_count_only_is_never_probed():
    choice = ThreadChoice(usual=1, solo=1, probe_every=2)
    assert run(choice, {1: 0.03}, 10) == [1] * 10
    choice.record(3, 0.01)  # a count it does not choose from is ignored
    assert choice.seconds == {1: 0.03}
