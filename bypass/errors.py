"""Errors that reach the user: each says where (file:line:col) and what, with the offending line."""

from __future__ import annotations


class BypassError(Exception):
    """An error the CLI reports in one line and exit status 2, without a traceback."""


class SpecError(BypassError):
    """A problem in a spec (or knowledge) file at a known position."""

    def __init__(self, path: str, line: int, col: int, message: str, source: str | None = None):
        super().__init__(message)
        self.path = path
        self.line = line
        self.col = col
        self.message = message
        self.source = source

    def render(self) -> str:
        head = f"{self.path}:{self.line}:{self.col}: error: {self.message}"
        if self.source is None:
            return head
        lines = self.source.splitlines()
        if not 1 <= self.line <= len(lines):
            return head
        text = lines[self.line - 1].expandtabs(1)
        caret = " " * max(self.col - 1, 0) + "^"
        return f"{head}\n    {text}\n    {caret}"

    def __str__(self) -> str:
        return self.render()


class BuildError(BypassError):
    """The C compiler is missing or rejected the generated agent."""
