"""Copy a trained checkpoint to where `endless` loads it, with the sampling it should use
by default written into its config (the checkpoint says how to sample it).

    .venv/bin/python ops/ship_model.py runs/dit/model.safetensors --guidance 2 --guidance-chunks 4

Tensors and the other metadata (e.g. the training step) are kept as they are; settings
not given keep the source's values.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.bundle import DEFAULT_WEIGHTS  # noqa: E402
from model.checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from model.errors import EndlessError  # noqa: E402
from model.sampler import add_sampling_options, sampling_changes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="trained checkpoint (e.g. runs/dit/model.safetensors)")
    ap.add_argument("-o", "--out", default=str(DEFAULT_WEIGHTS), help="default: %(default)s")
    add_sampling_options(ap)
    args = ap.parse_args(argv)
    changes = sampling_changes(args)
    try:
        config, tensors, meta = read_checkpoint(args.source)
        sampler = dataclasses.replace(config.sampler, **changes)
        config = dataclasses.replace(config, sampler=sampler)
        extra = {k: v for k, v in meta.items() if k not in ("config", "format_version")}
        save_checkpoint(args.out, tensors, config, extra)
    except EndlessError as exc:
        print(f"ship_model: error: {exc.message}", file=sys.stderr)
        return 2
    print(f"{args.out}: {config.name}, sampler {dataclasses.asdict(sampler)}, {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
