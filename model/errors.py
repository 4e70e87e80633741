"""The one exceptions module of endless.

    EndlessError                 base of every error this project raises on purpose
    ├── PromptError              a prompt that cannot be used (empty, too long, contradictory)
    │   └── UnknownWordsError    a prompt with words outside the model's vocabulary
    ├── ConfigError              an unknown preset or an inconsistent configuration
    ├── CheckpointError          a checkpoint that does not match the model (strict loading)
    ├── StoryboardError          a malformed storyboard / timeline
    ├── RenderError              bad arguments to an offline render (duration, path)
    ├── ImageError               a start image that cannot be used (not PNG/JPEG, too big)
    └── ProtocolError            a bad live-protocol request; `.code` names it (bad_json, ...)

Each error carries the offending value in `.value` so callers (CLI, server) can report it.
"""

from __future__ import annotations


class EndlessError(Exception):
    code = "error"

    def __init__(self, message: str, value: object = None):
        super().__init__(message)
        self.message = message
        self.value = value


class PromptError(EndlessError):
    code = "bad_prompt"


class UnknownWordsError(PromptError):
    code = "unknown_words"

    def __init__(self, words: tuple[str, ...], value: object = None):
        super().__init__("unknown word(s): " + ", ".join(repr(w) for w in words), value=value)
        self.words = tuple(words)


class ConfigError(EndlessError):
    code = "bad_config"


class CheckpointError(EndlessError):
    code = "bad_checkpoint"


class StoryboardError(EndlessError):
    code = "bad_storyboard"


class RenderError(EndlessError):
    code = "bad_render"


class ImageError(EndlessError):
    code = "bad_image"


class ProtocolError(EndlessError):
    code = "bad_request"

    def __init__(self, code: str, message: str, value: object = None):
        super().__init__(message, value=value)
        self.code = code
