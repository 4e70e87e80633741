"""Shared fixtures: a tiny random-init model, live servers and client sessions that are
closed at the end of each test. Timeouts scale with ENDLESS_TEST_TIME_SCALE."""

from __future__ import annotations

import os

import pytest
import pytest_asyncio
import torch
import uvloop

torch.set_num_threads(1)

TIME_SCALE = float(os.environ.get("ENDLESS_TEST_TIME_SCALE", "1"))


def pytest_collection_modifyitems(session, config, items):
    """The Ray tests first. ray.init forks its cluster's processes with a preexec_fn, and a
    child forked with Python code to run clears the other threads' states, whose frames
    may hold PyAV frames (a viewer's decoder thread holds its last one): their destructors
    join swscale threads that do not exist in the child, and it hangs (seen: a suite stuck
    in ray.init). At the start of a session no thread holds one yet."""
    items.sort(key=lambda item: item.module.__name__ != "test_engine_ray")  # stable


def timeout(seconds: float) -> float:
    """A test timeout, scaled for slow machines."""
    return seconds * TIME_SCALE


if hasattr(pytest_asyncio.plugin.PytestAsyncioSpecs, "pytest_asyncio_loop_factories"):

    def pytest_asyncio_loop_factories(config, item):
        """Async tests run on uvloop, like the server does."""
        return {"uvloop": uvloop.new_event_loop}


def prompt_sensitive(model):
    """Random-init the DiT's output head, which Wan's init zeroes: with a zero head a
    random-init model ignores its prompt, and tests could not see a prompt switch."""
    head = model.dit.head.head.weight
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.copy_(torch.randn(head.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="session")
def tiny_model():
    """The real engine with the tiny preset, random init (seed 0), prompt-sensitive."""
    from model.bundle import VideoModel

    return prompt_sensitive(VideoModel.from_seed(0, "tiny"))


@pytest_asyncio.fixture
async def live_server(tiny_model):
    """Factory: `await live_server(model=None, **config)` -> a started LiveServer on port 0
    (the tiny random-init model unless another is given)."""
    from server.app import LiveServer
    from server.config import ServerConfig

    made = []

    async def make(model=None, **overrides):
        overrides.setdefault("grace_seconds", 0.3)
        # the model's steps whatever the load: a busy test machine must not change frames
        # (the load policy has its own tests: tests/test_load_policy.py)
        overrides.setdefault("degrade", False)
        server = LiveServer(ServerConfig(**overrides), model or tiny_model)
        made.append(server)
        return await server.start()

    yield make
    for server in reversed(made):
        await server.close()


@pytest_asyncio.fixture
async def session():
    """Factory: `await session(url)` -> a connected LiveSession."""
    from client.session import LiveSession

    made = []

    async def make(url):
        s = LiveSession(url)
        made.append(s)
        return await s.connect(timeout(10))

    yield make
    for s in reversed(made):
        await s.close()
