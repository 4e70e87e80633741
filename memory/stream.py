"""Stream: one endless video, generated chunk by chunk with a constant-memory cache.

Synchronous and sans-I/O: the server drives `next_chunk()` from its worker thread. Each
chunk goes through three stages that are separate methods, so a scheduler can later batch
the denoise stage of several streams into one forward pass:

    plan()     -> ChunkPlan   (prompt, re-cache if the prompt changed, noise, context)
    denoise()  -> latents     (few-step flow matching, attending to the cached context)
    commit()   -> frames      (write the chunk's keys/values to the cache, decode)

A stream may be given chunks instead of generating them (`give`: teacher forcing from
frames, or a start image held over the first chunk); a given chunk is planned and
committed like a generated one, and its denoise stage returns it as it is. An optional
cascade stage (an `Upscaler`) raises the resolution of each decoded chunk it shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from memory.cache import CacheLayout, ContextCache
from memory.policy import CachePolicy, SinkRollingWindow
from memory.snapshot import SnapshotError, StreamSnapshot
from model.bundle import VideoModel
from model.chunk_frames import ChunkFrames
from model.dit import AttnContext, block_causal_mask, chunk_prev
from model.errors import EndlessError
from model.sampler import Cond, FlowSampler, full_steps
from model.still import fit_image
from model.storyboard import chunk_at
from model.text import EncodedPrompt
from model.upscale import Upscaler
from model.vae import frames_to_tensor, tensor_to_frames


@dataclass
class StreamStats:
    chunk_index: int = 0
    ms: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds, last chunk
    cache_bytes: int = 0


@dataclass
class ChunkPlan:
    chunk: int
    prompt: EncodedPrompt
    context: AttnContext | None
    n_context: int  # latent frames in the context
    noise: torch.Tensor  # (1, z, F, h, w)
    prev: torch.Tensor | None = None  # the DiT's `prev` input (models with prev_frames)
    given: torch.Tensor | None = None  # latents given for this chunk (not denoised)


def chunk_frames_of(model: VideoModel, warmup_chunks: int | None = None) -> ChunkFrames:
    """Video frames per chunk of the model's streams, as its VAE decodes them: chunk 0
    starts the decoder's video (Wan's VAE: 9 frames, then 12; TinyWorld's: 12 always)
    unless warm-up chunks (`warmup_chunks`, default the sampler's) were decoded before it."""
    n = model.config.stream.chunk_latent_frames
    if warmup_chunks is None:
        warmup_chunks = model.config.sampler.warmup_chunks
    warm = warmup_chunks > 0
    return ChunkFrames(model.vae.frames_for(n, not warm), model.vae.frames_for(n, False))


@dataclass
class ModelInputs:
    """A chunk's model inputs besides its noisy latents and noise level."""

    texts: dict[Cond, torch.Tensor]  # each (1, text_len, text_dim)
    positions: torch.Tensor  # (F,) rotary time positions of the chunk's latent frames
    context: AttnContext | None  # the cached context it attends to
    prev: torch.Tensor | None  # (1, P*C, F, h, w): the DiT's `prev` input, if it takes one

    def sigma(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.full((x.shape[0], len(self.positions)), sigma)

    def text(self, conds) -> torch.Tensor:
        return torch.cat([self.texts[c] for c in conds])

    def prev_for(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.prev is None else self.prev.expand(x.shape[0], -1, -1, -1, -1)


def chunk_noise(seed: int, chunk: int, shape, dtype) -> torch.Tensor:
    """Noise of a chunk depends on (seed, chunk) only: rewinds regenerate identically."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + chunk * 7919) % (2**63))
    return torch.randn(shape, generator=g).to(dtype)


def context_frame_noise(seed: int, frames: list[int], latents: torch.Tensor) -> torch.Tensor:
    """Noise for cached latent frames, by (seed, absolute frame index) only: a frame gets
    the same noise when its chunk is cached and whenever the context is re-cached."""
    noise = torch.empty_like(latents)
    for j, f in enumerate(frames):
        g = torch.Generator().manual_seed((seed * 2_000_029 + f * 104_729 + 1) % (2**63))
        noise[:, :, j] = torch.randn(latents[:, :, j].shape, generator=g).to(latents.dtype)
    return noise


class Stream:
    def __init__(
        self,
        model: VideoModel,
        prompt: str,
        seed: int = 0,
        policy: CachePolicy | None = None,
        image: np.ndarray | None = None,
        upscaler: Upscaler | None = None,
        warmup_chunks: int | None = None,
    ):
        """`image` (uint8 (H, W, 3), any size): start from it (see `start_from_image`);
        `upscaler`: a cascade stage applied to every shown chunk after the decode;
        `warmup_chunks`: chunks made before chunk 0 and never shown (None: the sampler's,
        none with an image: the image is the past chunk 0 follows)."""
        self.model = model
        cfg = model.config
        self.seed = seed
        # sampling is the model's config at this moment (model.with_sampler sets it)
        self.sampler = FlowSampler(cfg.sampler)
        self.step_limit: int | None = None  # fewer steps than the sampler's (load policy)
        sc = cfg.stream
        self.fps = sc.fps
        self.height, self.width = sc.height, sc.width
        self.chunk_frames = sc.chunk_latent_frames  # latent frames per chunk
        vae = model.vae
        self.z_dim = vae.z_dim
        self.latent_h = sc.height // vae.space_stride
        self.latent_w = sc.width // vae.space_stride
        # Warm-up (the sampler's warmup_chunks): chunks -N..-1, made before chunk 0 and
        # never shown; their latent frames sit before chunk 0's in the cache.
        if warmup_chunks is None:
            warmup_chunks = 0 if image is not None else cfg.sampler.warmup_chunks
        self.warmup_chunks = warmup_chunks
        self._warm_frames = warmup_chunks * self.chunk_frames
        self.frames = chunk_frames_of(model, warmup_chunks)  # video frames per chunk
        self.frames_per_chunk = self.frames.rest  # frames of every chunk after the first
        self._warm_prompt: EncodedPrompt | None = None
        self.policy = policy or SinkRollingWindow(
            sink=sc.sink_latent_frames,
            window=sc.window_latent_frames,
            margin=sc.rewind_chunks * sc.chunk_latent_frames,
            # the sink pins the first chunk shown, not the warm-up before it
            sink_start=self._warm_frames,
        )
        layout = CacheLayout.for_model(
            model.dit, self.z_dim, self.latent_h, self.latent_w, model.dtype
        )
        self.cache = ContextCache(layout, self.policy)
        self._null = model.text.null()
        self._timeline: list[tuple[int, EncodedPrompt]] = []
        self._decoder_states: dict[int, list] = {}  # chunk -> decoder carry before it
        self._given: dict[int, torch.Tensor] = {}  # chunk -> latents given for it
        self.upscaler = upscaler
        self._upscale_states: dict[int, object] = {}  # chunk -> upscaler carry before it
        scale = upscaler.scale if upscaler is not None else 1
        self.out_height, self.out_width = self.height * scale, self.width * scale
        self._recached_at: list[int] = []  # chunks whose generation began with a re-cache
        self.chunk_index = 0
        self._floor = 0  # no rewind before this chunk (where a restored stream began)
        self.stats = StreamStats(cache_bytes=self.cache.nbytes)
        self.set_prompt(prompt, at_chunk=0)
        if image is not None:
            self.start_from_image(image)

    # -- given chunks ----------------------------------------------------------------------
    @torch.no_grad()
    def give(self, frames: np.ndarray) -> None:
        """Take uint8 (frames.start(n), H, W, 3) as the next n chunks, teacher forcing:
        they are encoded by the model's VAE (in one pass, from a fresh encoder state), and
        each is cached as context as if generated and decoded when its turn comes (after
        the warm-up, if there is one). Only before anything is generated; a rewind into
        them gives them again."""
        if self.chunk_index or self.cache.head:
            raise EndlessError("chunks can be given only before the stream starts")
        n = self.frames.chunk_of(len(frames))
        if not len(frames) or self.frames.start(n) != len(frames):
            raise ValueError(
                f"give whole chunks ({self.frames.first} frames, then {self.frames.rest} each)"
            )
        video = frames_to_tensor(frames).to(self.cache.layout.device, self.model.dtype)
        latents, _ = self.model.vae.encode(video)
        f = self.chunk_frames
        self._given = {k: latents[:, :, k * f : (k + 1) * f] for k in range(n)}

    def start_from_image(self, image: np.ndarray) -> None:
        """Start from a still: `image` is resized and cropped to the frame, held for the
        first chunk (which is shown: the video opens on the image, as image-to-video models
        open on their input) and becomes the sink every later chunk attends to, so the
        scene continues from it under the prompt; what the prompt leaves unsaid is the
        image's."""
        still = fit_image(image, self.height, self.width)
        self.give(np.repeat(still[None], self.frames.first, axis=0))

    # -- prompts -------------------------------------------------------------------------
    def set_prompt(self, text: str, at_chunk: int | None = None) -> int:
        """Use `text` from chunk `at_chunk` on (default: the next chunk). Returns that chunk.

        Raises PromptError / UnknownWordsError at once; nothing changes on error.
        """
        at = self.chunk_index if at_chunk is None else at_chunk
        if at < self.chunk_index:
            raise EndlessError(
                f"chunk {at} is already generated (next is {self.chunk_index}); rewind first",
                value=at,
            )
        t0 = time.perf_counter()
        enc = self.model.text.encode_strict(text)
        self.stats.ms["text"] = (time.perf_counter() - t0) * 1e3
        self._timeline = [(c, p) for c, p in self._timeline if c < at] + [(at, enc)]
        return at

    def prompt_for(self, chunk: int) -> str:
        return self._prompt_at(chunk).text

    def _prompt_at(self, chunk: int) -> EncodedPrompt:
        if chunk < self._timeline[0][0]:
            raise EndlessError(f"the prompt of chunk {chunk} is no longer kept", value=chunk)
        current = self._timeline[0][1]
        for c, p in self._timeline:
            if c <= chunk:
                current = p
        return current

    HISTORY = 32  # prompt changes remembered before the rewind horizon

    def _prune_timeline(self) -> None:
        """Keep the entries a rewind can reach plus a short history (bounded memory)."""
        floor = self.min_rewind_chunk
        older = [i for i, (c, _) in enumerate(self._timeline) if c <= floor]
        if len(older) > self.HISTORY:
            self._timeline = self._timeline[older[-self.HISTORY] :]

    # -- rewinding -----------------------------------------------------------------------
    @property
    def min_rewind_chunk(self) -> int:
        frame = self.policy.min_rewind(self.cache.head) - self._warm_frames
        return max(self._floor, -(-frame // self.chunk_frames))

    def rewind(self, chunk: int) -> None:
        """Forget chunks >= chunk; the next next_chunk() generates `chunk` again."""
        if not self.min_rewind_chunk <= chunk <= self.chunk_index:
            raise EndlessError(
                f"can rewind to chunks {self.min_rewind_chunk}..{self.chunk_index}, not {chunk}",
                value=chunk,
            )
        if self.warming:  # nothing shown yet, and the warm-up goes on as it was
            return
        self.cache.rewind(self._warm_frames + chunk * self.chunk_frames)
        if any(c >= chunk for c in self._recached_at):
            # a re-cache at or after `chunk` rewrote the context's keys/values: redo it
            self.cache.prompt_key = None
        elif chunk > 0:
            self.cache.prompt_key = self._prompt_at(chunk - 1)
        elif self._warm_frames:  # the warm-up stays: chunk 0 follows it as before
            self.cache.prompt_key = self._warm_prompt
        self._recached_at = [c for c in self._recached_at if c < chunk]
        self.chunk_index = chunk

    # -- snapshots -----------------------------------------------------------------------
    def snapshot(self) -> StreamSnapshot:
        """What this stream needs to continue from its next chunk (see memory.snapshot).
        Taken between chunks, after the warm-up."""
        if self.warming:
            raise SnapshotError("a stream cannot be snapshotted during its warm-up")
        k = self.chunk_index
        frames = self.cache.context_frames()
        slots = [self.policy.slot_for(g) for g in frames]
        return StreamSnapshot(
            model=self.model.config.name,
            seed=self.seed,
            chunk=k,
            head=self.cache.head,
            timeline=tuple((c, p.text) for c, p in self._timeline),
            frames=tuple(frames),
            latents=self.cache.latents[slots].clone(),  # (n, z, h, w)
            decoder=self._decoder_states.get(k),
            warmup_chunks=self.warmup_chunks,
            upscaler=self._upscale_states.get(k) if self.upscaler is not None else None,
        )

    @classmethod
    def restore(
        cls,
        model: VideoModel,
        snap: StreamSnapshot,
        policy: CachePolicy | None = None,
        upscaler: Upscaler | None = None,
    ) -> Stream:
        """A stream that continues `snap`: its next chunk is `snap.chunk`, generated after
        a re-cache of the context under that chunk's prompt. It cannot rewind before
        `snap.chunk`. A stream that started from an image continues it: the image is in
        its sink. SnapshotError if the snapshot does not fit this model."""
        if snap.model != model.config.name:
            raise SnapshotError(
                f"the snapshot is of a {snap.model!r} model, not {model.config.name!r}",
                value=snap.model,
            )
        if not snap.timeline:
            raise SnapshotError("the snapshot has no prompt")
        s = cls(
            model,
            snap.timeline[0][1],
            seed=snap.seed,
            policy=policy,
            upscaler=upscaler,
            warmup_chunks=snap.warmup_chunks,
        )
        want = (len(snap.frames), *s.cache.latents.shape[1:])
        if tuple(snap.latents.shape) != want or list(snap.frames) != s.policy.context(snap.head):
            raise SnapshotError(
                f"the snapshot's context {tuple(snap.latents.shape)} at frame {snap.head} "
                f"does not fit this stream's cache {want}"
            )
        s._timeline = [(c, model.text.encode_strict(t)) for c, t in snap.timeline]
        for j, g in enumerate(snap.frames):
            s.cache.latents[s.policy.slot_for(g)].copy_(snap.latents[j].to(model.dtype))
        s.cache.head = snap.head
        s.cache.prompt_key = None  # the next chunk re-caches the keys/values
        s.chunk_index = s._floor = snap.chunk
        s._decoder_states = {snap.chunk: snap.decoder}
        if upscaler is not None and snap.upscaler is not None:
            s._upscale_states = {snap.chunk: snap.upscaler}
        if s._warm_frames:
            s._warm_prompt = s._prompt_at(0) if s._timeline[0][0] == 0 else None
        return s

    # -- generation ----------------------------------------------------------------------
    def next_chunk(self) -> np.ndarray:
        """Generate the next chunk: uint8 (frames.count(chunk), H, W, 3)."""
        t0 = time.perf_counter()
        plan = self.plan()
        t1 = time.perf_counter()
        latents = self.denoise(plan)
        t2 = time.perf_counter()
        frames = self.commit(plan, latents)
        t3 = time.perf_counter()
        ms = self.stats.ms
        ms.update(plan=(t1 - t0) * 1e3, denoise=(t2 - t1) * 1e3, total=(t3 - t0) * 1e3)
        self.stats.chunk_index = plan.chunk
        self.stats.cache_bytes = self.cache.nbytes
        return frames

    @torch.no_grad()
    def plan(self) -> ChunkPlan:
        while self.warming:
            self.warm_up_step()
        return self._plan(self.chunk_index)

    @property
    def warming(self) -> bool:
        """Whether warm-up chunks remain to be made before chunk 0 (see warm_up_step)."""
        return self.chunk_index == 0 and self.cache.head < self._warm_frames

    @torch.no_grad()
    def warm_up_step(self) -> None:
        """Generate and cache the next of the sampler's `warmup_chunks` chunks before
        chunk 0 (under chunk 0's prompt, guided as the stream is) and drop its frames, so
        that the first chunk shown follows a path in its context instead of starting from
        nothing. `plan()` makes those left; a scheduler may make them one at a time."""
        t0 = time.perf_counter()
        first = self.cache.head == 0
        if first:
            self._warm_prompt = self._prompt_at(0)
        k = (self.cache.head - self._warm_frames) // self.chunk_frames  # -N .. -1
        plan = self._plan(k)
        self.commit(plan, self.denoise(plan))
        spent = 0.0 if first else self.stats.ms.get("warmup", 0.0)
        self.stats.ms["warmup"] = spent + (time.perf_counter() - t0) * 1e3  # all of it

    def _plan(self, k: int) -> ChunkPlan:
        prompt = self._warm_prompt if k < 0 else self._prompt_at(k)
        t0 = time.perf_counter()
        if self.cache.prompt_key is not prompt:
            if self._recache(prompt):
                self._recached_at.append(k)
            self.cache.prompt_key = prompt
        self.stats.ms["recache"] = (time.perf_counter() - t0) * 1e3
        shape = (1, self.z_dim, self.chunk_frames, self.latent_h, self.latent_w)
        noise = chunk_noise(self.seed, k, shape, self.model.dtype).to(self.cache.layout.device)
        ctx = self.cache.attn_context(self.model.dit)
        prev = chunk_prev(self._latents_before(), self.chunk_frames)
        n_context = len(self.cache.context_frames())
        return ChunkPlan(k, prompt, ctx, n_context, noise, prev, self._given.get(k))

    def _latents_before(self) -> torch.Tensor | None:
        """The DiT's `prev_frames` latent frames just before the next chunk, as its
        context shows them (at the sampler's context noise, as in training); None when
        the model takes none, zeros before a stream's first chunk."""
        p = self.model.config.dit.prev_frames
        if not p:
            return None
        head = self.cache.head
        frames = list(range(head - p, head))
        context = self.cache.context_frames()
        if any(f not in context for f in frames):  # a stream's first chunk
            shape = (1, self.z_dim, p, self.latent_h, self.latent_w)
            return torch.zeros(shape, dtype=self.model.dtype, device=self.cache.layout.device)
        latents = self.cache.context_latents()[:, :, [context.index(f) for f in frames]]
        return self._as_context(latents, frames)

    def _as_context(self, latents: torch.Tensor, frames: list[int]) -> torch.Tensor:
        """Latents of absolute latent frames `frames` as later chunks see them: at the
        sampler's context noise, each frame's noise fixed by (seed, frame)."""
        sigma_c = self.model.config.sampler.context_noise
        if sigma_c <= 0:
            return latents
        return (1 - sigma_c) * latents + sigma_c * context_frame_noise(self.seed, frames, latents)

    def _text(self, prompt: EncodedPrompt, cond: bool = True) -> torch.Tensor:
        tokens = prompt.tokens if cond else self._null
        return tokens.unsqueeze(0).to(self.model.dtype)

    def _positions(self, n_context: int) -> torch.Tensor:
        return torch.arange(n_context, n_context + self.chunk_frames)

    @torch.no_grad()
    def denoise(self, plan: ChunkPlan) -> torch.Tensor:
        if plan.given is not None:
            return plan.given
        inputs = self.model_inputs(plan)
        return self._drive(self.walk(plan), inputs)

    def walk(self, plan: ChunkPlan):
        """The chunk's sampling loop as a generator of model calls (FlowSampler.walk):
        `denoise` answers them one by one, memory/batch.py several streams' at once."""
        motion = self.motion_guidance_at(plan.chunk, plan.prompt)
        guidance = self.guidance_at(plan.chunk)
        key = (self.seed, plan.chunk)  # fixes the fresh noise of x0_renoise samplers
        return self.sampler.walk(plan.noise, self.steps, guidance, None, motion, key)

    def model_inputs(self, plan: ChunkPlan) -> ModelInputs:
        """What the chunk's model calls take besides x and sigma."""
        texts = {
            Cond.PROMPT: self._text(plan.prompt),
            Cond.EMPTY: self._text(plan.prompt, cond=False),
        }
        if plan.prompt.without_motion is not None:
            texts[Cond.NO_MOTION] = plan.prompt.without_motion.unsqueeze(0).to(self.model.dtype)
        return ModelInputs(texts, self._positions(plan.n_context), plan.context, plan.prev)

    def _drive(self, walk, inputs: ModelInputs) -> torch.Tensor:
        dit = self.model.dit
        call = next(walk)
        while True:
            x, sigma, conds = call
            v = dit(
                x,
                inputs.sigma(x, sigma),
                inputs.text(conds),
                inputs.positions,
                ctx=inputs.context,
                prev=inputs.prev_for(x),
            )
            try:
                call = walk.send(v)
            except StopIteration as done:
                return done.value

    @property
    def steps(self) -> int:
        full = full_steps(self.sampler.cfg)
        return full if self.step_limit is None else max(1, min(full, self.step_limit))

    @property
    def guidance(self) -> float:
        return self.sampler.cfg.guidance

    def guidance_at(self, chunk: int) -> float:
        """The guidance scale of `chunk`: the stream's, or 1 (off) once the sampler's
        `guidance_chunks` chunks have passed since the prompt in force began (warm-up
        chunks, before chunk 0, are guided)."""
        return self.guidance if self.guided(chunk) else 1.0

    def motion_guidance_at(self, chunk: int, prompt: EncodedPrompt) -> float:
        """The motion guidance weight of `chunk` under `prompt`: the sampler's on the chunks
        guidance guides, 0 where the prompt says no motion (nothing to leave unsaid)."""
        if prompt.without_motion is None or not self.guided(chunk):
            return 0.0
        return self.sampler.cfg.motion_guidance

    def guided(self, chunk: int) -> bool:
        """Whether `chunk` is one the sampler guides (CFG and motion guidance): within
        `guidance_chunks` chunks of the start or switch of its prompt (all when 0)."""
        n = self.sampler.cfg.guidance_chunks
        return not (n and chunk >= 0 and chunk - self._prompt_start(chunk) >= n)

    def _prompt_start(self, chunk: int) -> int:
        """The chunk where the prompt in force at `chunk` began (a start or a switch)."""
        return max(c for c, _ in self._timeline if c <= chunk)

    @torch.no_grad()
    def commit(self, plan: ChunkPlan, latents: torch.Tensor) -> np.ndarray:
        """Cache the chunk's keys/values (as context for what follows), then decode it."""
        t0 = time.perf_counter()
        x, sigma, text = self.context_call(plan, latents)
        positions = self._positions(plan.n_context)
        _, kvs = self.model.dit(x, sigma, text, positions, ctx=plan.context, return_kv=True)
        self.cache_chunk(latents, kvs)
        t1 = time.perf_counter()
        video, state = self.model.vae.decode(latents, self.decoder_state(plan))
        frames = self.finish(plan, video, state)
        upscale = self.stats.ms.get("upscale", 0.0) if self.upscaler is not None else 0.0
        decode = (time.perf_counter() - t1) * 1e3 - upscale
        self.stats.ms.update(cache=(t1 - t0) * 1e3, decode=decode)
        return frames

    # the stages of commit, for the batched executor (memory/batch.py)
    def context_call(self, plan: ChunkPlan, latents: torch.Tensor):
        """The model call that gives a finished chunk's keys/values as later chunks see
        them (at the sampler's context noise, as in training: diffusion forcing):
        (x, sigma, text); its positions and context are the chunk's own."""
        head = self.cache.head
        frames = list(range(head, head + self.chunk_frames))
        s = torch.full((1, latents.shape[2]), self.model.config.sampler.context_noise)
        return self._as_context(latents, frames), s, self._text(plan.prompt)

    def cache_chunk(self, latents: torch.Tensor, kvs) -> None:
        """Write the chunk's latents and per-layer (k, v) at the cache head and advance."""
        head = self.cache.head
        self.cache.write(list(range(head, head + self.chunk_frames)), latents, kvs)
        self.cache.advance(self.chunk_frames)

    def decoder_state(self, plan: ChunkPlan):
        """The decoder's carry before the chunk (None at a stream's start)."""
        return self._decoder_states.get(plan.chunk)

    def finish(self, plan: ChunkPlan, video: torch.Tensor, state) -> np.ndarray:
        """Keep the decoder's carry, upscale the chunk (if the stream has the stage), count
        it and prune what a rewind can no longer reach; the chunk's uint8 frames."""
        frames = tensor_to_frames(video)
        self._decoder_states[plan.chunk + 1] = state
        if self.upscaler is not None and plan.chunk >= 0:  # warm-up chunks are never shown
            t0 = time.perf_counter()
            carry = self._upscale_states.get(plan.chunk)
            frames, self._upscale_states[plan.chunk + 1] = self.upscaler.upscale(frames, carry)
            self.stats.ms["upscale"] = (time.perf_counter() - t0) * 1e3
        self.chunk_index = max(0, plan.chunk + 1)  # warm-up chunks (< 0) are not counted
        floor = self.min_rewind_chunk
        for states in (self._decoder_states, self._upscale_states, self._given):
            for c in [c for c in states if c < floor]:
                del states[c]
        self._recached_at = [c for c in self._recached_at if c >= floor]
        self._prune_timeline()
        return frames

    def _context_kv(self, latents, frames, prompt, positions, ctx, mask):
        """Per-layer keys/values of finished latents (absolute latent frames `frames`) as
        later chunks will see them: at the sampler's context noise level, as in training
        (diffusion forcing)."""
        s = torch.full((1, latents.shape[2]), self.model.config.sampler.context_noise)
        _, kvs = self.model.dit(
            self._as_context(latents, frames),
            s,
            self._text(prompt),
            positions,
            ctx=ctx,
            mask=mask,
            return_kv=True,
        )
        return kvs

    def _recache(self, prompt: EncodedPrompt) -> bool:
        """LongLive's KV re-cache: recompute the context's keys/values under `prompt`."""
        frames = self.cache.context_frames()
        if not frames:
            return False
        groups = self.policy.chunk_groups(frames, self.chunk_frames)
        tpf = self.cache.layout.tokens_per_frame
        mask = block_causal_mask(groups, groups, tpf, self.cache.layout.device)
        latents = self.cache.context_latents()
        kvs = self._context_kv(latents, frames, prompt, torch.arange(len(frames)), None, mask)
        kept = set()  # LongLive (recache_sink False) keeps the sink's keys/values as made
        if not self.model.config.stream.recache_sink:
            kept = set(filter(self.policy.pinned, frames))
        self.cache.write(frames, latents, kvs, skip=kept)
        return True


def prepare_start_image(
    model: VideoModel, prompt: str, image: np.ndarray
) -> tuple[str, np.ndarray]:
    """(the prompt to start from `image` with, the image fitted to the stream's frame):
    the text encoder completes what the prompt leaves unsaid from the image where it can
    (`TextEncoder.complete_from_image`)."""
    sc = model.config.stream
    still = fit_image(image, sc.height, sc.width)
    return model.text.complete_from_image(prompt, still), still


def follow_timeline(
    model: VideoModel,
    timeline: list[tuple[float, str]],
    seconds: float,
    seed: int = 0,
):
    """Yield the frames of a stream that follows [(at_seconds, prompt)] for `seconds`.

    Each switch applies at the first chunk starting at or after its time; whole chunks only.
    """
    s = Stream(model, timeline[0][1], seed=seed)
    switches = {chunk_at(at, s.fps, s.frames): p for at, p in timeline[1:]}
    for k in range(s.frames.chunk_of(int(round(seconds * s.fps)))):
        if k in switches:
            s.set_prompt(switches[k])
        yield from s.next_chunk()


@torch.no_grad()
def continue_from(
    model: VideoModel, prompt: str, frames: np.ndarray, given_chunks: int, seed: int = 0
) -> np.ndarray:
    """Teacher forcing at inference: the frames of a stream under `prompt` whose first
    `given_chunks` chunks are `frames`' own (encoded by the model's VAE, cached as context
    as if generated, and decoded; after the warm-up, if the sampler has one) and whose
    later chunks, up to `frames`' length in whole chunks, the model makes. With rendered
    truth as `frames` it tells what a model does from a true past, not from its own."""
    s = Stream(model, prompt, seed=seed)
    n = s.frames.chunk_of(len(frames))
    if not 0 <= given_chunks <= n:
        raise ValueError(f"given_chunks must be in 0..{n}, not {given_chunks}")
    if given_chunks:
        s.give(frames[: s.frames.start(given_chunks)])
    return np.concatenate([s.next_chunk() for _ in range(n)])
