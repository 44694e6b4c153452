"""Argument lists as strace and the trace agent print them: split at top-level commas, unquote
C strings. Both tools print strings C-style ("a\\"b\\x01"), so one reader serves both."""

from __future__ import annotations

OPENERS = {"(": ")", "[": "]", "{": "}"}


def split_args(text: str) -> list[str]:
    """Split `a, "b,c", {x=1, y=2}, 3</p,q>` into its four top-level arguments."""
    args, depth, start, index = [], [], 0, 0
    while index < len(text):
        char = text[index]
        if char == '"':
            index = _skip_string(text, index)
            continue
        if char in OPENERS:
            depth.append(OPENERS[char])
        elif char == "<" and index > 0 and (text[index - 1].isalnum() or text[index - 1] == "_"):
            depth.append(">")                          # strace -y: 3</path> and AT_FDCWD</cwd>
        elif depth and char == depth[-1]:
            depth.pop()
        elif char == "," and not depth:
            args.append(text[start:index].strip())
            start = index + 1
        index += 1
    tail = text[start:].strip()
    if tail or args:
        args.append(tail)
    return args


def _skip_string(text: str, index: int) -> int:
    index += 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == '"':
            return index + 1
        index += 1
    return index


_SIMPLE = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "\\": 92, '"': 34, "'": 39, "?": 63}


def unquote(arg: str) -> str | None:
    """The C string literal at the start of `arg` ("..." possibly followed by `...`), or None."""
    if not arg.startswith('"'):
        return None
    out = bytearray()
    index = 1
    while index < len(arg) and arg[index] != '"':
        char = arg[index]
        if char != "\\":
            out += char.encode()
            index += 1
            continue
        nxt = arg[index + 1:index + 2]
        if nxt == "x":
            digits = arg[index + 2:index + 4]
            out.append(int(digits, 16))
            index += 2 + len(digits)
        elif nxt.isdigit():
            end = index + 1
            while end < len(arg) and end < index + 4 and arg[end] in "01234567":
                end += 1
            out.append(int(arg[index + 1:end], 8) & 0xFF)
            index = end
        else:
            out.append(_SIMPLE.get(nxt, ord(nxt) if nxt else 92))
            index += 2
    return out.decode("utf-8", "surrogateescape")


def parse_int(arg: str) -> int | None:
    try:
        return int(arg, 0)
    except ValueError:
        return None
