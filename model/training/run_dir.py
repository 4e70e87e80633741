"""A training run's directory, from which it resumes: last.safetensors (the train state),
model.safetensors (the full VideoModel with EMA weights: what `endless render --model`
and the evaluator use), opt.pt (the optimizer's moments) and, when the run trains a
velocity probe, probe.pt (its head: a training aid, never part of a model file)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from safetensors import safe_open

from model.bundle import VideoModel
from model.checkpoint import head_rows, load_strict, read_checkpoint, save_checkpoint


class RunDir:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = self.out / "last.safetensors"
        self.ema = self.out / "model.safetensors"
        self.opt = self.out / "opt.pt"
        self.log = self.out / "log.jsonl"
        self.probe = self.out / "probe.pt"

    def load_model(self, model: VideoModel, init: str | None, vae: str) -> int:
        """Fill `model` and return its step: the run's own state when it has one, else
        `init` (a full model, e.g. the shipped weights; inputs it lacks start at zero),
        else a fresh denoiser on the trained VAE `vae`."""
        step = 0
        if self.state.exists():
            _, tensors, meta = read_checkpoint(self.state)
            load_strict(model, tensors, str(self.state))
            step = int(meta.get("step", 0))
            print(f"resumed at step {step}", flush=True)
        elif init:
            _, tensors, meta = read_checkpoint(init)
            for name, p in model.dit.grown_parameters():
                if f"dit.{name}" not in tensors:
                    tensors[f"dit.{name}"] = p.detach()
                    print(f"{name} is new: it starts at zero", flush=True)
            load_strict(model, tensors, init)
            step = int(meta.get("step", 0))
            print(f"initialised from {init} (step {step})", flush=True)
        else:
            _, vae_tensors, _ = read_checkpoint(vae)
            load_strict(model.vae, vae_tensors, vae)
        return step

    def resume(self, model: VideoModel, opt: torch.optim.Optimizer, probe=None) -> VideoModel:
        """The optimizer's moments, the EMA model and the probe's head, from the run's files
        when it is a resumed run, else the EMA starts as a copy of `model`."""
        ema = copy.deepcopy(model)
        if probe is not None and self.state.exists() and self.probe.exists():
            probe.load_state_dict(torch.load(self.probe, map_location=self._device(model)))
        if self.state.exists():
            if self.opt.exists():
                opt.load_state_dict(torch.load(self.opt, map_location=self._device(model)))
                if self._format() == "1":
                    upgrade_head_moments(opt, model)
            if self.ema.exists():
                _, tensors, _ = read_checkpoint(self.ema)
                load_strict(ema, tensors, str(self.ema))
        ema.requires_grad_(False)
        return ema

    def save(self, model: VideoModel, ema: VideoModel, opt, step: int, probe=None) -> None:
        meta = {"step": str(step)}
        save_checkpoint(self.state, model.state_dict(), model.config, meta)
        ema.save(self.ema, meta)
        torch.save(opt.state_dict(), self.opt)
        if probe is not None:
            torch.save(probe.state_dict(), self.probe)

    def _format(self) -> str | None:
        with safe_open(str(self.state), framework="pt") as f:
            return (f.metadata() or {}).get("format_version")

    @staticmethod
    def _device(model: VideoModel) -> torch.device:
        return next(model.parameters()).device


def upgrade_head_moments(opt: torch.optim.Optimizer, model: VideoModel) -> None:
    """Reorder the optimizer's moments of the head's rows as reading a format-1 file
    reorders the rows themselves (model/checkpoint.py), so a run saved before format 2
    resumes with each moment on its own row."""
    dit = model.config.dit
    c, p = dit.out_dim, math.prod(dit.patch_size)
    for param in (model.dit.head.head.weight, model.dit.head.head.bias):
        for name, value in opt.state.get(param, {}).items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                opt.state[param][name] = head_rows(value, c, p)
