"""Prompt policy: blocked words and patterns an operator lists in a file (--prompt-policy).

One entry a line; blank lines and lines starting with `#` are ignored:

    # words or phrases: matched case-insensitively, as whole words
    magenta
    big red circle
    # `re:` then a Python regular expression (case-insensitive, searched anywhere)
    re:\\bcircl(e|ing)\\b

A prompt that matches any entry is refused with error code `prompt_refused`. The refusal
names the policy's line number, never the entry itself, so a client cannot read the list
back by probing it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from model.errors import ConfigError, EndlessError


class PromptRefused(EndlessError):
    code = "prompt_refused"


@dataclass(frozen=True)
class Rule:
    line: int
    pattern: re.Pattern


class PromptPolicy:
    def __init__(self, rules: list[Rule], source: str = "<policy>"):
        self.rules = rules
        self.source = source

    @classmethod
    def parse(cls, text: str, source: str = "<policy>") -> PromptPolicy:
        rules = []
        for n, raw in enumerate(text.splitlines(), 1):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            if entry.startswith("re:"):
                body = entry[3:].strip()
            else:
                words = [re.escape(w) for w in entry.split()]
                body = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
            try:
                rules.append(Rule(n, re.compile(body, re.IGNORECASE)))
            except re.error as exc:
                raise ConfigError(
                    f"{source}, line {n}: bad regular expression: {exc}", value=entry
                ) from None
        return cls(rules, source)

    @classmethod
    def load(cls, path: str | Path) -> PromptPolicy:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read prompt policy {path}: {exc}", value=str(path)) from None
        return cls.parse(text, str(path))

    def match(self, text: str) -> Rule | None:
        """The first rule the prompt matches (after Unicode NFKC folding), or None."""
        text = unicodedata.normalize("NFKC", text)
        return next((r for r in self.rules if r.pattern.search(text)), None)

    def check(self, text: str) -> str:
        """`text` if the policy allows it; else raise PromptRefused (code prompt_refused)."""
        rule = self.match(text)
        if rule is not None:
            raise PromptRefused(
                f"this prompt is refused by the server's prompt policy (rule {rule.line})",
                value=rule.line,
            )
        return text

    def __len__(self) -> int:
        return len(self.rules)
