"""StateDir: each stream's state on disk, so a server started again on the same directory
brings its streams back (`endless serve --state-dir D`).

Per stream, two files, each written to a temporary name, flushed and renamed over the old
one (a reader sees the old file or the new one, never half of one):

    ID.safetensors   the stream's snapshot (memory.snapshot.StreamSnapshot.to_bytes())
    ID.json          {"format": "endless.stream-state", "version": 1, "stream": ID,
                      "seed", "chunk", "frame", "paused", "plan": [[chunk, text, source]],
                      "control_token", "view_token", "started", "snapshot_sha256",
                      "saved_at"}

The JSON is written last and names the snapshot's SHA-256, so a crash between the two
writes leaves a pair that does not match: it is skipped like a corrupt one. Files are
readable by their owner only (they hold the streams' tokens). `load()` never raises for a
bad file: it reports it (log + `endless_state_files{result="skipped"}`) and goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory.snapshot import SnapshotError, StreamSnapshot

log = logging.getLogger(__name__)
FORMAT = "endless.stream-state"
VERSION = 1
STREAM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class StreamState:
    stream: str
    seed: int
    chunk: int  # the snapshot's chunk: the restored stream generates from there
    frame: int  # the first frame it shows on resuming (in that chunk or later)
    paused: bool
    plan: tuple[tuple[int, str, str], ...]  # (first chunk, prompt, "prompt" | "storyboard")
    snapshot: bytes
    control_token: str | None = None
    view_token: str | None = None
    started: float | None = None  # when the stream was created: its watermark's time


class BadStateFile(Exception):
    pass


class StateDir:
    def __init__(self, path: str | Path, on_result=None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._on_result = on_result or (lambda result: None)  # "written" / "resumed" / ...

    # -- writing (called from a worker thread) ------------------------------------------------
    def save(self, state: StreamState) -> None:
        if not STREAM_ID.match(state.stream):
            raise ValueError(f"unsafe stream id {state.stream!r}")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "stream": state.stream,
            "seed": state.seed,
            "chunk": state.chunk,
            "frame": state.frame,
            "paused": state.paused,
            "plan": [list(e) for e in state.plan],
            "control_token": state.control_token,
            "view_token": state.view_token,
            "started": state.started,
            "snapshot_sha256": hashlib.sha256(state.snapshot).hexdigest(),
            "saved_at": time.time(),
        }
        _write_atomic(self.path / f"{state.stream}.safetensors", state.snapshot)
        _write_atomic(self.path / f"{state.stream}.json", json.dumps(meta).encode())
        self._on_result("written")

    def remove(self, stream_id: str) -> None:
        for suffix in (".json", ".safetensors"):
            try:
                (self.path / f"{stream_id}{suffix}").unlink()
            except FileNotFoundError:
                pass

    # -- reading (at start-up) ----------------------------------------------------------------
    def load(self, model_name: str) -> list[StreamState]:
        """Every stream saved here that fits the model `model_name`; bad files skipped."""
        out = []
        for meta_path in sorted(self.path.glob("*.json")):
            try:
                out.append(self._read(meta_path, model_name))
            except BadStateFile as exc:
                log.warning("state file %s skipped: %s", meta_path.name, exc)
                self._on_result("skipped")
        return out

    def _read(self, meta_path: Path, model_name: str) -> StreamState:
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise BadStateFile(f"unreadable JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise BadStateFile("not an endless stream state file")
        if meta.get("version") != VERSION:
            raise BadStateFile(f"version {meta.get('version')!r}, this server reads {VERSION}")
        try:
            stream = str(meta["stream"])
            if not STREAM_ID.match(stream) or meta_path.stem != stream:
                raise BadStateFile(f"stream id {stream!r} does not match its file name")
            data = (self.path / f"{stream}.safetensors").read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["snapshot_sha256"]:
                raise BadStateFile("its snapshot file does not match (corrupt or half written)")
            snap = StreamSnapshot.from_bytes(data)
            if snap.model != model_name:
                raise BadStateFile(f"a {snap.model!r} stream; this server runs {model_name!r}")
            plan = tuple((int(c), str(t), str(src)) for c, t, src in meta["plan"])
            if not plan:
                raise BadStateFile("an empty plan")
            return StreamState(
                stream=stream,
                seed=int(meta["seed"]),
                chunk=int(snap.chunk),
                frame=int(meta["frame"]),
                paused=bool(meta["paused"]),
                plan=plan,
                snapshot=data,
                control_token=_token(meta.get("control_token")),
                view_token=_token(meta.get("view_token")),
                started=_time(meta.get("started")),
            )
        except BadStateFile:
            raise
        except (OSError, KeyError, TypeError, ValueError, SnapshotError) as exc:
            raise BadStateFile(f"{type(exc).__name__}: {exc}") from None


def _token(value) -> str | None:
    return value if isinstance(value, str) else None


def _time(value) -> float | None:
    """A unix time from a state file (None where it is missing or not a number)."""
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
