"""Read a Wan2.1-based denoiser from what users have on disk, into our (= Wan's) names.

Accepted: a diffusers `transformer/` directory (config.json + safetensors, sharded with an
index or not) or a pipeline directory holding one; an original-layout directory or file
(`diffusion_pytorch_model*.safetensors`); a training checkpoint (`.pt` / `.safetensors`)
holding `generator_ema` / `generator` / `model` dicts, the EMA preferred. Files are chosen
by a fixed order of preference (safetensors, then .pt/.pth/.bin); pickles are read with
`torch.load(weights_only=True)`. Every error is a CheckpointError that names the file and
the first keys or shapes that do not fit.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open

from model.config import DiTConfig
from model.errors import CheckpointError
from model.wan import shapes_only
from model.wan.keys import WRAPPERS, KeyMapper, to_wan_names

# Wrapper dicts of Self-Forcing / CausVid / LongLive checkpoints, in order of preference.
STATE_KEYS = ("generator_ema", "generator", "model", "state_dict")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Heads are not in any tensor's shape: Wan2.1 publishes 128-wide heads (1.3B: 12 heads of
# dim 1536; 14B: 40 heads of dim 5120).
WAN_HEAD_DIM = 128
TEXT_LEN = 512  # umT5 tokens a Wan prompt is padded to


# -- files ---------------------------------------------------------------------------
def read_tensors(path: Path) -> dict:
    """All tensors of one file (safetensors or a weights-only pickle); may be nested."""
    try:
        if path.suffix == ".safetensors":
            if shapes_only.active():  # the header only (model/wan/shapes_only.py)
                return shapes_only.safetensors_shapes(str(path))
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        try:  # mapped, not copied: a training checkpoint may hold several models
            raw = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the legacy (non-zip) format cannot be mapped
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        return shapes_only.to_meta(raw) if shapes_only.active() else raw
    except Exception as exc:  # safetensors and torch raise their own error types
        raise CheckpointError(f"{path} cannot be read as a checkpoint: {exc}") from exc


def weight_files(folder: Path) -> list[Path]:
    """The denoiser's weight files in `folder`, by the fixed order of preference."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        try:
            shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index[0]} is not a safetensors index: {exc}") from exc
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index[0]} names shards that are missing: {missing[:3]}")
        return [folder / s for s in shards]
    for pattern in ("diffusion_pytorch_model*.safetensors", "*.safetensors"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    found = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if found:
        return found[:1]
    raise CheckpointError(
        f"{folder} holds no denoiser weights (diffusion_pytorch_model*.safetensors, "
        "*.safetensors or a .pt/.pth/.bin checkpoint)",
        value=str(folder),
    )


def denoiser_folder(path: Path) -> Path:
    """A pipeline directory's `transformer/`, else the directory itself."""
    sub = path / "transformer"
    return sub if (path / "model_index.json").is_file() and sub.is_dir() else path


def unwrap(raw: dict, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a training checkpoint (nested dicts, or flat keys with a
    `generator_ema.`-style first component), the EMA preferred; and which one it was."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source} holds a {type(raw).__name__}, not a state dict")
    for key in STATE_KEYS:
        if isinstance(raw.get(key), dict):
            return raw[key], f"{key} of {source}"
    for key in STATE_KEYS[:2]:  # flat safetensors: "generator_ema.blocks.0...."
        inner = {k[len(key) + 1 :]: v for k, v in raw.items() if k.startswith(key + ".")}
        if inner:
            return inner, f"{key} of {source}"
    return raw, source


def read_denoiser(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in our / original Wan names, one line saying what was read)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"denoiser weights not found: {path}", value=str(path))
    if path.is_dir():
        folder = denoiser_folder(path)
        files = weight_files(folder)
        raw: dict = {}
        for f in files:
            raw.update(read_tensors(f))
        source = str(folder) if len(files) > 1 else str(files[0])
    else:
        raw, source = read_tensors(path), str(path)
    state, what = unwrap(raw, Path(source).name if not Path(source).is_dir() else source)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors, e.g. {bad[:3]}")
    state, layout = to_wan_names(state)
    return state, f"{what} ({layout} layout, {len(state)} tensors)"


# -- configuration -------------------------------------------------------------------
def heads_from_config(path: str | Path) -> int | None:
    """Attention heads from the config.json beside the weights (diffusers:
    num_attention_heads; original Wan: num_heads), or None when there is none."""
    path = Path(path)
    folder = denoiser_folder(path) if path.is_dir() else path.parent
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        raw = json.loads(cfg.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{cfg} is not JSON: {exc}") from exc
    heads = raw.get("num_attention_heads", raw.get("num_heads"))
    return int(heads) if heads is not None else None


def dit_config_from_state(state: dict[str, torch.Tensor], heads: int | None = None) -> DiTConfig:
    """The DiTConfig a Wan state dict (our names) was made with, from its shapes. Heads do
    not show in any shape: `heads`, else Wan's published head width (128)."""
    need = (
        "patch_embedding.weight",
        "text_embedding.0.weight",
        "time_embedding.0.weight",
        "blocks.0.ffn.0.weight",
        "head.head.weight",
    )
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"cannot infer the denoiser's sizes: it lacks {missing}")
    dim, in_dim, *patch = state["patch_embedding.weight"].shape
    cells = math.prod(patch)
    out_rows = state["head.head.weight"].shape[0]
    if out_rows % cells:
        raise CheckpointError(f"head.head has {out_rows} rows, not a multiple of {cells}")
    layers = 1 + max(int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if heads is None:
        if dim % WAN_HEAD_DIM:
            raise CheckpointError(
                f"cannot tell the heads of a {dim}-wide denoiser: give them (config.json's "
                "num_attention_heads / num_heads, or the family preset)",
                value=dim,
            )
        heads = dim // WAN_HEAD_DIM
    if dim % heads:
        raise CheckpointError(f"{heads} heads do not divide the width {dim}", value=heads)
    prev = state.get("prev_embedding.weight")
    return DiTConfig(
        patch_size=tuple(int(p) for p in patch),
        in_dim=int(in_dim),
        out_dim=out_rows // cells,
        dim=int(dim),
        ffn_dim=int(state["blocks.0.ffn.0.weight"].shape[0]),
        freq_dim=int(state["time_embedding.0.weight"].shape[1]),
        text_dim=int(state["text_embedding.0.weight"].shape[1]),
        text_len=TEXT_LEN,
        num_heads=int(heads),
        num_layers=layers,
        qk_norm="blocks.0.self_attn.norm_q.weight" in state,
        cross_attn_norm="blocks.0.norm3.weight" in state,
        prev_frames=0 if prev is None else prev.shape[1] // (in_dim * cells),
        relative_values="blocks.0.self_attn.o_rel.weight" in state,
    )


def check_fits(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> None:
    """Raise CheckpointError naming the first missing, unexpected and misshapen keys (both
    shapes) unless `state` fits `model` exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own)
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:3]}")
    if misshapen:
        problems.append(f"{len(misshapen)} shape mismatch(es), e.g. {misshapen[:3]}")
    if problems:
        raise CheckpointError(f"{source} does not fit the denoiser: " + "; ".join(problems))


# -- LoRA ------------------------------------------------------------------------------
LORA_ALPHA = 256  # LongLive's published adapter: rank 256, alpha 256 (scale 1)
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
PEFT = KeyMapper(prefixes=("base_model.model.", *WRAPPERS.prefixes), infixes=WRAPPERS.infixes)


def read_lora(path: str | Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{module: (A (r, in), B (out, r))} of a peft adapter (LongLive's
    `{"generator_lora": ...}`, or the peft state dict itself), and its alpha."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA not found: {path}", value=str(path))
    raw = read_tensors(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a LoRA state dict")
    alpha = raw.get("lora_alpha", raw.get("alpha", LORA_ALPHA))
    state = raw.get("generator_lora", raw)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: generator_lora is not a state dict")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    odd = []
    for key, value in state.items():
        m = LORA_KEY.match(PEFT.name(key) or "")
        if key in ("lora_alpha", "alpha"):
            continue
        if m is None or not isinstance(value, torch.Tensor) or value.dim() != 2:
            odd.append(key)
            continue
        parts.setdefault(m["module"], {})[m["part"]] = value
    if odd:
        raise CheckpointError(
            f"{path}: {len(odd)} entries are not 2-D peft lora_A / lora_B weights, e.g. {odd[:3]}",
            value=odd[:3],
        )
    if not parts:
        raise CheckpointError(f"{path} holds no LoRA weights", value=str(path))
    halves = sorted(m for m, p in parts.items() if set(p) != {"A", "B"})
    if halves:
        raise CheckpointError(f"{path}: modules with only one of lora_A / lora_B: {halves[:3]}")
    alpha = float(alpha.item() if isinstance(alpha, torch.Tensor) else alpha)
    return {m: (p["A"], p["B"]) for m, p in parts.items()}, alpha


def merge_lora(state: dict[str, torch.Tensor], lora_path: str | Path) -> dict[str, torch.Tensor]:
    """`state` with a LoRA merged in: W + (alpha / rank) * B A for each adapted module
    (computed in float32, stored in W's dtype). Raises CheckpointError naming the first
    modules that have no weight here or whose shapes do not fit."""
    lora, alpha = read_lora(lora_path)
    absent = sorted(m for m in lora if f"{m}.weight" not in state)
    if absent:
        raise CheckpointError(
            f"LoRA {lora_path} adapts {len(absent)} module(s) the denoiser lacks, "
            f"e.g. {absent[:3]}",
            value=absent[:3],
        )
    misfits = []
    for m, (a, b) in sorted(lora.items()):
        w = state[f"{m}.weight"]
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            misfits.append(
                f"{m}: lora_B {tuple(b.shape)} x lora_A {tuple(a.shape)} vs weight {tuple(w.shape)}"
            )
    if misfits:
        raise CheckpointError(
            f"LoRA {lora_path} does not fit: {len(misfits)} module(s), e.g. {misfits[:3]}",
            value=misfits[:3],
        )
    out = dict(state)
    for m, (a, b) in lora.items():
        w = state[f"{m}.weight"]
        delta = (alpha / a.shape[0]) * (b.float() @ a.float())
        out[f"{m}.weight"] = (w.float() + delta).to(w.dtype)
    return out
