"""The provenance options `endless serve` and `endless render` share."""

from __future__ import annotations

import argparse


def add_provenance_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("provenance (docs/provenance.md)")
    g.add_argument(
        "--no-watermark",
        dest="watermark",
        action="store_false",
        help="do not mark frames with the invisible watermark (logged as a warning)",
    )
    g.add_argument(
        "--prompt-policy",
        metavar="FILE",
        help="refuse prompts matching this file's words and re: patterns (prompt_refused)",
    )
    g.add_argument("--c2pa-key", metavar="PEM", help="private key signing C2PA manifests")
    g.add_argument(
        "--c2pa-cert", metavar="PEM", help="its certificate chain (signer first, then CAs)"
    )
    g.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state kept across restarts: each stream's snapshot (serve: every few seconds and "
        "at shutdown; a server started again on DIR brings the streams back) and the "
        "development C2PA key (default for the key: ~/.cache/endless)",
    )
    g.add_argument("--server-name", default="", help="name carried in the mark (default: host)")
