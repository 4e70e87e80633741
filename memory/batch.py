"""Batched denoising: several streams' chunks in one forward pass per sampling step.

The engine's executor. Every stream's context is re-indexed 0..n-1 and its chunk continues
from n, so streams whose contexts hold the same number of latent frames share every rotary
position: their chunks stack on the batch axis (noisy latents, noise levels and prompts
side by side, each stream's cached keys/values repeated for its guidance groups) and one
call of the denoiser answers all of them. Streams with other context lengths (a stream's
first chunks, before its window fills) form a batch of their own.

Each stream walks its own sampling loop (`Stream.walk`, a generator of model calls); the
walks advance in lockstep, so a stream's steps, guidance groups and noise are its own and
its result is what `Stream.denoise` gives it alone (tests/test_batch.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from memory.stream import ChunkPlan, ModelInputs, Stream
from model.dit import AttnContext

Job = tuple[Stream, ChunkPlan]


def batch_key(job: Job) -> tuple:
    """Jobs with equal keys can share a forward pass: same denoiser, same positions."""
    stream, plan = job
    return id(stream.model.dit), plan.n_context


@torch.no_grad()
def denoise_together(
    jobs: list[Job], stop: Callable[[int], bool] | None = None
) -> list[torch.Tensor | None]:
    """The denoised latents of each job's chunk, in order: one forward pass per step for
    each group of jobs with the same `batch_key`. `stop(i)`, asked before each step, drops
    job i there (a prompt switch made its chunk stale): its result is None, and the
    others go on without it. A given chunk (`ChunkPlan.given`) is its own result."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    out: list[torch.Tensor | None] = [None] * len(jobs)
    for i, job in enumerate(jobs):
        if job[1].given is not None:  # a given chunk (a start image): nothing to denoise
            out[i] = job[1].given
        else:
            groups[batch_key(job)].append(i)
    for members in groups.values():
        dropped = None if stop is None else (lambda j, m=members: stop(m[j]))
        made = _denoise_group([jobs[i] for i in members], dropped)
        for i, latents in zip(members, made, strict=True):
            out[i] = latents
    return out


def _denoise_group(jobs: list[Job], stop: Callable[[int], bool] | None) -> list:
    dit = jobs[0][0].model.dit
    walks = [stream.walk(plan) for stream, plan in jobs]
    inputs = [stream.model_inputs(plan) for stream, plan in jobs]
    calls = [next(w) for w in walks]
    done: list[torch.Tensor | None] = [None] * len(jobs)
    over = [False] * len(jobs)  # finished, or dropped by `stop`
    contexts = BatchedContexts(inputs)
    while True:
        for i in range(len(jobs)):
            if not over[i] and stop is not None and stop(i):
                over[i] = True
        if not (active := [i for i in range(len(jobs)) if not over[i]]):
            return done
        xs = [calls[i][0] for i in active]
        rows = [len(x) for x in xs]
        sigma = torch.cat([inputs[i].sigma(calls[i][0], calls[i][1]) for i in active])
        text = torch.cat([inputs[i].text(calls[i][2]) for i in active])
        prev = _cat_or_none([inputs[i].prev_for(calls[i][0]) for i in active])
        ctx = contexts.get([(i, r) for i, r in zip(active, rows, strict=True)])
        v = dit(torch.cat(xs), sigma, text, inputs[active[0]].positions, ctx=ctx, prev=prev)
        for i, vi in zip(active, v.split(rows), strict=True):
            try:
                calls[i] = walks[i].send(vi)
            except StopIteration as finished:
                done[i], over[i] = finished.value, True


class BatchedContexts:
    """The stacked context keys/values for a batch layout [(job, rows), ...], built once
    per layout (a chunk's steps mostly repeat one) instead of once per step."""

    def __init__(self, inputs: list[ModelInputs]):
        self.inputs = inputs
        self._built: dict[tuple, AttnContext | None] = {}

    def get(self, layout: list[tuple[int, int]]) -> AttnContext | None:
        key = tuple(layout)
        if key not in self._built:
            self._built[key] = self._stack(layout)
        return self._built[key]

    def _stack(self, layout: list[tuple[int, int]]) -> AttnContext | None:
        contexts = [(self.inputs[i].context, rows) for i, rows in layout]
        if contexts[0][0] is None:  # no context: a group of first chunks
            return None
        layers = len(contexts[0][0].kv)
        kv = []
        for layer in range(layers):
            ks = [c.kv[layer][0].expand(rows, -1, -1, -1) for c, rows in contexts]
            vs = [c.kv[layer][1].expand(rows, -1, -1, -1) for c, rows in contexts]
            kv.append((torch.cat(ks), torch.cat(vs)))
        return AttnContext(kv, contexts[0][0].angles)


def _cat_or_none(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts)


@torch.no_grad()
def commit_together(jobs: list[Job], latents: list[torch.Tensor]) -> list:
    """Commit each job's denoised chunk (`Stream.commit`), the keys/values of every group
    of jobs with the same `batch_key` in one forward pass and the decodes of streams whose
    decoder carries stack in one call; the uint8 frames of each chunk, in order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[batch_key(job)].append(i)
    for members in groups.values():
        _cache_group([jobs[i] for i in members], [latents[i] for i in members])
    return _decode_all(jobs, latents)


def _cache_group(jobs: list[Job], latents: list[torch.Tensor]) -> None:
    calls = [s.context_call(p, z) for (s, p), z in zip(jobs, latents, strict=True)]
    x, sigma, text = (torch.cat(parts) for parts in zip(*calls, strict=True))
    inputs = [s.model_inputs(p) for s, p in jobs]
    ctx = BatchedContexts(inputs).get([(i, 1) for i in range(len(jobs))])
    _, kvs = jobs[0][0].model.dit(x, sigma, text, inputs[0].positions, ctx=ctx, return_kv=True)
    for j, ((stream, _), z) in enumerate(zip(jobs, latents, strict=True)):
        stream.cache_chunk(z, [(k[j : j + 1], v[j : j + 1]) for k, v in kvs])


def _decode_all(jobs: list[Job], latents: list[torch.Tensor]) -> list:
    """Decode each chunk; chunks whose decoder carries have the same shapes (same model,
    none at a stream's start) decode as one batch, carries split back per stream."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (stream, plan) in enumerate(jobs):
        state = stream.decoder_state(plan)
        shapes = None if state is None else tuple(None if t is None else t.shape for t in state)
        groups[(id(stream.model.vae), shapes)].append(i)
    frames: list = [None] * len(jobs)
    for (_, shapes), members in groups.items():
        vae = jobs[members[0]][0].model.vae
        z = torch.cat([latents[i] for i in members])
        states = [jobs[i][0].decoder_state(jobs[i][1]) for i in members]
        state = None if shapes is None else _stack_states(states)
        video, new_state = vae.decode(z, state)
        for j, i in enumerate(members):
            stream, plan = jobs[i]
            mine = [None if t is None else t[j : j + 1].clone() for t in new_state]
            frames[i] = stream.finish(plan, video[j : j + 1], mine)
    return frames


def _stack_states(states: list[list]) -> list:
    return [None if ts[0] is None else torch.cat(ts) for ts in zip(*states, strict=True)]
