"""Tokens of the spec language. `{{ ... }}` blocks are single tokens holding raw C or Python."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError


@dataclass(frozen=True)
class Token:
    kind: str        # "ident", "string", "block", "punct", "number", "eof"
    text: str        # for strings: the unquoted value; for blocks: the inner text
    line: int
    col: int
    start: int       # offsets into the source, for slicing C text back out
    end: int


_PUNCT = "()[],;*&.:<>=+-/|!~^%?"


class Lexer:
    def __init__(self, source: str, path: str):
        self.source = source
        self.path = path
        self.pos = 0
        self.line = 1
        self.col = 1

    def error(self, message: str, line: int | None = None, col: int | None = None) -> SpecError:
        return SpecError(self.path, line or self.line, col or self.col, message, self.source)

    def _advance(self, count: int = 1) -> None:
        for _ in range(count):
            if self.source[self.pos] == "\n":
                self.line += 1
                self.col = 1
            else:
                self.col += 1
            self.pos += 1

    def _peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.source[index] if index < len(self.source) else ""

    def _skip_space_and_comments(self) -> None:
        while self.pos < len(self.source):
            ch = self._peek()
            if ch.isspace():
                self._advance()
            elif ch == "/" and self._peek(1) == "*":
                line, col = self.line, self.col
                end = self.source.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("comment is never closed ('*/' missing)", line, col)
                self._advance(end + 2 - self.pos)
            elif ch == "/" and self._peek(1) == "/":
                while self.pos < len(self.source) and self._peek() != "\n":
                    self._advance()
            else:
                return

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        while True:
            self._skip_space_and_comments()
            if self.pos >= len(self.source):
                out.append(Token("eof", "", self.line, self.col, self.pos, self.pos))
                return out
            out.append(self._next())

    def _next(self) -> Token:
        line, col, start = self.line, self.col, self.pos
        ch = self._peek()
        if ch == "{" and self._peek(1) == "{":
            return self._block(line, col, start)
        if ch == "}" and self._peek(1) == "}":
            raise self.error("'}}' without a matching '{{'")
        if ch == '"':
            return self._string(line, col, start)
        if ch.isalpha() or ch == "_" or ch == "@":
            self._advance()
            while self._peek().isalnum() or self._peek() == "_":
                self._advance()
            return Token("ident", self.source[start:self.pos], line, col, start, self.pos)
        if ch.isdigit():
            while self._peek().isalnum():
                self._advance()
            return Token("number", self.source[start:self.pos], line, col, start, self.pos)
        if ch == "#":
            raise self.error("preprocessor lines belong inside agent_prologue {{ }}; write @include there")
        if ch in _PUNCT:
            self._advance()
            return Token("punct", ch, line, col, start, self.pos)
        raise self.error(f"unexpected character {ch!r}")

    def _block(self, line: int, col: int, start: int) -> Token:
        self._advance(2)
        inner_start = self.pos
        end = self.source.find("}}", self.pos)
        if end < 0:
            raise self.error("block opened here is never closed ('}}' missing)", line, col)
        inner_line, inner_col = self.line, self.col
        self._advance(end - self.pos)
        text = self.source[inner_start:end]
        self._advance(2)
        # The block's position is where its text starts, so #line maps compiler errors back here.
        return Token("block", text, inner_line, inner_col, start, self.pos)

    def _string(self, line: int, col: int, start: int) -> Token:
        self._advance()
        chars: list[str] = []
        while True:
            ch = self._peek()
            if ch == "" or ch == "\n":
                raise self.error("string is never closed (missing '\"')", line, col)
            if ch == "\\":
                self._advance()
                chars.append(self._peek())
                self._advance()
                continue
            self._advance()
            if ch == '"':
                return Token("string", "".join(chars), line, col, start, self.pos)
            chars.append(ch)
