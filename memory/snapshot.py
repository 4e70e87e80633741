"""StreamSnapshot: what a stream needs to continue, taken at a chunk boundary.

A snapshot holds the latents of the context frames (the sink and the window), the
decoder's carry, the prompt timeline, the seed and the position (next chunk, cache head),
the stream's warm-up chunks (none for a stream started from an image, whose sink holds
the image) and the upscaling stage's carry, if the stream has one.
Keys and values are not kept: the restored stream re-derives them with a re-cache under
the prompt of its next chunk (LongLive's KV re-cache, as after a prompt switch), so a
snapshot of the tiny model is a few hundred kilobytes, not megabytes.

`to_bytes()` writes safetensors (the tensors, plus the rest as JSON in its metadata);
`from_bytes()` reads it back strictly and raises SnapshotError on anything it does not
recognise. Sans-I/O: no files, no processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model.errors import EndlessError

FORMAT = "endless.stream-snapshot"
VERSION = 1


class SnapshotError(EndlessError):
    code = "bad_snapshot"


@dataclass(frozen=True)
class StreamSnapshot:
    model: str  # the model's config name (a snapshot of another model is refused)
    seed: int
    chunk: int  # the next chunk to generate
    head: int  # the cache head: absolute index of the next latent frame
    timeline: tuple[tuple[int, str], ...]  # (first chunk, prompt text), by chunk
    frames: tuple[int, ...]  # absolute latent frames held in `latents`, oldest first
    latents: torch.Tensor  # (len(frames), z, h, w) the context's latents
    decoder: list  # the decoder's carry before `chunk`: tensors / None / nested lists
    warmup_chunks: int | None = None  # chunks made before chunk 0 (None: the sampler's)
    upscaler: object = None  # the upscaling stage's carry before `chunk` (as `decoder`)

    @property
    def nbytes(self) -> int:
        carries = (*_leaves(self.decoder), *_leaves(self.upscaler))
        return _tensor_bytes(self.latents) + sum(_tensor_bytes(t) for t in carries)

    def to_bytes(self) -> bytes:
        tensors = {"latents": self.latents.contiguous()}
        layout = _flatten(self.decoder, tensors, "decoder")
        upscaler = _flatten(self.upscaler, tensors, "upscaler")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "seed": self.seed,
            "chunk": self.chunk,
            "head": self.head,
            "timeline": [list(e) for e in self.timeline],
            "frames": list(self.frames),
            "decoder": layout,
        }
        if self.warmup_chunks is not None:  # keys a version 1 reader without them skips
            meta["warmup_chunks"] = self.warmup_chunks
        if upscaler is not None:
            meta["upscaler"] = upscaler
        return st_save(tensors, metadata={"snapshot": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamSnapshot:
        try:
            tensors = st_load(data)
            meta = json.loads(_metadata(data)["snapshot"])
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise SnapshotError(
                    f"not a version {VERSION} stream snapshot "
                    f"({meta.get('format')!r} v{meta.get('version')!r})"
                )
            return cls(
                model=str(meta["model"]),
                seed=int(meta["seed"]),
                chunk=int(meta["chunk"]),
                head=int(meta["head"]),
                timeline=tuple((int(c), str(t)) for c, t in meta["timeline"]),
                frames=tuple(int(f) for f in meta["frames"]),
                latents=tensors["latents"],
                decoder=_unflatten(meta["decoder"], tensors),
                warmup_chunks=_optional_int(meta.get("warmup_chunks")),
                upscaler=_unflatten(meta.get("upscaler"), tensors),
            )
        except SnapshotError:
            raise
        except (SafetensorError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"unreadable stream snapshot: {exc}") from None


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _leaves(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, list | tuple):
        for s in state:
            yield from _leaves(s)


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def _flatten(state, tensors: dict[str, torch.Tensor], name: str):
    """A carry -> a JSON layout: a tensor becomes its key, None stays, lists nest."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        key = f"{name}.{len(tensors) - 1}"
        tensors[key] = state.detach().contiguous().clone()
        return key
    if isinstance(state, list | tuple):
        return [_flatten(s, tensors, name) for s in state]
    raise SnapshotError(f"cannot snapshot a {name} carry holding {type(state).__name__}")


def _unflatten(layout, tensors: dict[str, torch.Tensor]):
    if layout is None:
        return None
    if isinstance(layout, str):
        return tensors[layout]
    if isinstance(layout, list):
        return [_unflatten(x, tensors) for x in layout]
    raise SnapshotError(f"bad decoder layout entry {layout!r}")


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__ (8-byte little-endian length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("bad safetensors header length")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__") or {}
