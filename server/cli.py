"""`endless` command line: one subcommand per module, each exposing add_arguments/run.

Subcommand modules are imported only when used, so `endless render` never loads aiortc.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from model.errors import EndlessError

COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("server.render_cmd", "generate a video file offline, chunk by chunk"),
    "serve": ("server.serve_cmd", "run the live server (WebRTC + websockets)"),
    "watch": ("client.watch", "watch a live stream, send prompts, record to MP4"),
    "evaluate": ("model.tinyworld.evaluate", "score a video against its prompt timeline"),
    "verify": ("server.verify_cmd", "find endless's watermark and C2PA manifest in a video"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="endless",
        description="endless: streaming video generation",
        epilog="`endless COMMAND --help` gives each command's options; README.md and docs/ "
        "in the repository describe them",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = argv[0] if argv else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except EndlessError as exc:
        print(f"endless {args.command}: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
