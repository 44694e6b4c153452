"""The spec language (Bypass 2.x compatible) → `Spec`.

    agent_prologue {{ @include "x.h" }};
    int open( in string const char *path, int flags, [ int mode ] )
    agent_action {{ ... }}
    shadow_action {{ ... }};
    options "open*" ignore;

The outer grammar is read here; each C declaration inside it is handed to pycparser (bypass.cdecl).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..cdecl import parse_function, parse_param
from ..errors import SpecError
from .lexer import Lexer, Token
from .model import Block, Function, OptionRule, Param, Position, Spec

DIRECTIONS = ("in", "out")
FORMS = ("string", "opaque", "array")
OPTION_KEYWORDS = ("ignore", "not_supported", "entry", "setting", "quiet_family", "debug")
_SECTION_WORDS = ("agent_prologue", "shadow_prologue", "agent_default_action")
_ACTION_WORDS = ("agent_action", "shadow_action")
_DIRECTIVE = re.compile(r'^(?P<indent>\s*)@(?P<word>\w+)\s*(?P<arg>.*?)\s*$')


class Parser:
    def __init__(self, source: str, path: str):
        self.source = source
        self.path = path
        self.tokens = Lexer(source, path).tokens()
        self.index = 0
        self.spec = Spec(path=path, source=source)

    # -- token helpers ---------------------------------------------------------------
    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.peek()
        self.index += 1
        return token

    def error(self, token: Token, message: str) -> SpecError:
        return SpecError(self.path, token.line, token.col, message, self.source)

    def expect(self, kind: str, text: str | None, what: str) -> Token:
        token = self.peek()
        if token.kind != kind or (text is not None and token.text != text):
            raise self.error(token, f"expected {what}, found {_describe(token)}")
        return self.take()

    def optional_semicolon(self) -> None:
        if self.peek().kind == "punct" and self.peek().text == ";":
            self.take()

    def block(self, token: Token) -> Block:
        return Block(token.text, Position(self.path, token.line, token.col))

    # -- grammar ---------------------------------------------------------------------
    def parse(self) -> Spec:
        while self.peek().kind != "eof":
            token = self.peek()
            if token.kind == "ident" and token.text in _SECTION_WORDS:
                self.section()
            elif token.kind == "ident" and token.text == "options":
                self.options()
            else:
                self.function()
        self.check_duplicates()
        return self.spec

    def section(self) -> None:
        word = self.take()
        body = self.expect("block", None, f"'{{{{' after {word.text}")
        self.optional_semicolon()
        if word.text == "agent_prologue":
            self.spec.agent_prologue.append(self.prologue(body))
        elif word.text == "shadow_prologue":
            self.spec.shadow_prologue.append(self.block(body))
        else:
            if self.spec.agent_default_action is not None:
                raise self.error(word, "agent_default_action is given twice")
            self.spec.agent_default_action = self.block(body)

    def prologue(self, token: Token) -> Block:
        """Turn @include/@source lines into #include lines and a list of C files to link."""
        lines = []
        for number, text in enumerate(token.text.split("\n")):
            found = _DIRECTIVE.match(text)
            if not found:
                lines.append(text)
                continue
            line = token.line + number
            col = (token.col if number == 0 else 1) + len(found["indent"])
            word, arg = found["word"], found["arg"]
            if word not in ("include", "source"):
                raise SpecError(self.path, line, col, f"unknown directive '@{word}' (expected @include or @source)",
                                self.source)
            if not (re.fullmatch(r'"[^"]+"', arg) or (word == "include" and re.fullmatch(r"<[^>]+>", arg))):
                raise SpecError(self.path, line, col, f"@{word} needs a quoted file name", self.source)
            if word == "include":
                self.spec.includes.append(f"#include {arg}")
                lines.append("")
            else:
                self.spec.sources.append(arg.strip('"'))
                lines.append("")
        return Block("\n".join(lines), Position(self.path, token.line, token.col))

    def options(self) -> None:
        start = self.take()
        patterns = []
        while self.peek().kind == "string":
            patterns.append(self.take().text)
        if not patterns:
            raise self.error(self.peek(), f"expected a quoted symbol pattern after 'options', found {_describe(self.peek())}")
        keyword = self.peek()
        if keyword.kind != "ident" or keyword.text not in OPTION_KEYWORDS:
            raise self.error(keyword, f"expected one of {', '.join(OPTION_KEYWORDS)}, found {_describe(keyword)}")
        self.take()
        argument = None
        if keyword.text == "entry":
            argument = self.expect("string", None, "the quoted name of the call these symbols enter").text
        elif keyword.text == "setting" and self.peek().kind == "string":     # its type, for bypass run --set
            from ..declared import check_type_name
            problem = check_type_name(self.peek().text)
            if problem:
                raise self.error(self.peek(), problem)
            argument = self.take().text
        elif keyword.text == "debug":
            from ..declared import SPEC_SUBSYSTEMS
            for pattern in patterns:
                if pattern not in SPEC_SUBSYSTEMS:
                    raise self.error(start, f"options ... debug: unknown subsystem \"{pattern}\"; a spec's code "
                                            f"reports on {', '.join(SPEC_SUBSYSTEMS)} (the runtime on the others)")
        self.expect("punct", ";", "';' after the options rule")
        self.spec.options.append(OptionRule(tuple(patterns), keyword.text, argument,
                                            Position(self.path, start.line, start.col)))

    def function(self) -> None:
        start = self.peek()
        header: list[Token] = []
        while not (self.peek().kind == "punct" and self.peek().text == "("):
            token = self.peek()
            if token.kind == "eof":
                raise self.error(start, "declaration never reaches its '(' parameter list")
            if token.kind == "block":
                raise self.error(token, "a '{{' block here must follow agent_action, shadow_action, "
                                        "agent_prologue, shadow_prologue or agent_default_action")
            if token.kind == "punct" and token.text == ";":
                raise self.error(token, "expected a function declaration before ';'")
            if token.kind == "string":
                raise self.error(token, "unexpected string; is a keyword such as 'options' missing?")
            header.append(self.take())
        if not header or header[-1].kind != "ident":
            raise self.error(self.peek(), "expected a function name before '('")
        name_token = header[-1]
        open_paren = self.take()
        params = self.params(name_token.text, open_paren)
        ret_text = self.source[header[0].start:name_token.start] if len(header) > 1 else ""
        if not ret_text.strip():
            raise self.error(name_token, f"function '{name_token.text}' has no return type")
        decl = parse_function(f"{ret_text}{name_token.text}(void)", self.path, start.line, start.col, self.source)
        actions: dict[str, Block] = {}
        while self.peek().kind == "ident" and self.peek().text in _ACTION_WORDS:
            word = self.take()
            if word.text in actions:
                raise self.error(word, f"{word.text} is given twice for {name_token.text}")
            actions[word.text] = self.block(self.expect("block", None, f"'{{{{' after {word.text}"))
        if actions:
            self.optional_semicolon()
        else:
            token = self.peek()
            if not (token.kind == "punct" and token.text == ";"):
                raise self.error(token, f"expected agent_action, shadow_action or ';' after the declaration of "
                                        f"{name_token.text}, found {_describe(token)}")
            self.take()
        self.spec.functions.append(Function(
            name=name_token.text, ret=decl.ret, params=tuple(params),
            at=Position(self.path, name_token.line, name_token.col),
            agent_action=actions.get("agent_action"), shadow_action=actions.get("shadow_action")))

    def params(self, function: str, open_paren: Token) -> list[Param]:
        params: list[Param] = []
        if self.peek().kind == "punct" and self.peek().text == ")":
            self.take()
            return params
        if self.peek().text == "void" and self.peek(1).text == ")":
            self.index += 2
            return params
        while True:
            params.append(self.param(function))
            token = self.take()
            if token.kind == "punct" and token.text == ")":
                break
            if not (token.kind == "punct" and token.text == ","):
                raise self.error(token, f"expected ',' or ')' in the parameters of {function}, found {_describe(token)}")
        seen_vararg = None
        for param in params:
            if param.vararg:
                seen_vararg = param
            elif seen_vararg is not None:
                raise SpecError(self.path, param.at.line, param.at.col,
                                "a fixed parameter cannot follow a [ vararg ] one", self.source)
        names = [p.name for p in params]
        for param in params:
            if names.count(param.name) > 1:
                raise SpecError(self.path, param.at.line, param.at.col,
                                f"parameter '{param.name}' is declared twice", self.source)
        return params

    def param(self, function: str) -> Param:
        vararg = False
        opener = self.peek()
        if opener.kind == "punct" and opener.text == "[":
            self.take()
            vararg = True
        direction_words: list[str] = []
        while self.peek().kind == "ident" and self.peek().text in DIRECTIONS and _more_c(self.peek(1)):
            word = self.take()
            if word.text in direction_words:
                raise self.error(word, f"'{word.text}' is given twice")
            direction_words.append(word.text)
        direction = " ".join(w for w in DIRECTIONS if w in direction_words) or None
        form = size = None
        if self.peek().kind == "ident" and self.peek().text in FORMS and _more_c(self.peek(1)):
            form_token = self.take()
            form = form_token.text
            if self.peek().kind == "string":
                size = self.take().text
            elif form in ("opaque", "array"):
                raise self.error(self.peek(), f"'{form}' needs a quoted length expression, e.g. {form} \"count\"")
        first = self.peek()
        depth = 0
        last = None
        while True:
            token = self.peek()
            if token.kind == "eof":
                raise self.error(first, f"parameter list of {function} is never closed")
            if token.kind == "block":
                raise self.error(token, f"parameter list of {function} is never closed before this block")
            if token.kind == "punct" and token.text == "(":
                depth += 1
            elif token.kind == "punct" and token.text == ")":
                if depth == 0:
                    break
                depth -= 1
            elif token.kind == "punct" and token.text == "," and depth == 0:
                break
            elif token.kind == "punct" and token.text == "]" and depth == 0 and vararg:
                break
            elif token.kind == "punct" and token.text == ";":
                raise self.error(token, f"expected ')' to close the parameters of {function}")
            last = self.take()
        if last is None:
            raise self.error(first, "expected a parameter declaration")
        if vararg:
            self.expect("punct", "]", "']' to close the [ vararg ] parameter")
        text = self.source[first.start:last.end]
        c_param = parse_param(text, self.path, first.line, first.col, self.source)
        at = Position(self.path, first.line, first.col)
        if direction and "out" in direction and not (c_param.type.is_pointer):
            raise SpecError(self.path, first.line, first.col,
                            f"'out' parameter '{c_param.name}' must be a pointer", self.source)
        if form == "string" and not c_param.type.is_char_pointer:
            raise SpecError(self.path, first.line, first.col,
                            f"'string' parameter '{c_param.name}' must be a char pointer", self.source)
        if form in ("opaque", "array") and not c_param.type.is_pointer:
            raise SpecError(self.path, first.line, first.col,
                            f"'{form}' parameter '{c_param.name}' must be a pointer", self.source)
        return Param(c_param, direction, form, size, vararg, at)

    def check_duplicates(self) -> None:
        seen: dict[str, Function] = {}
        for function in self.spec.functions:
            if function.name in seen:
                first = seen[function.name].at
                raise SpecError(self.path, function.at.line, function.at.col,
                                f"'{function.name}' is declared twice (first at line {first.line})", self.source)
            seen[function.name] = function


def _more_c(token: Token) -> bool:
    """An annotation word is only an annotation when C text follows it."""
    return token.kind in ("ident", "string")


def _describe(token: Token) -> str:
    if token.kind == "eof":
        return "end of file"
    if token.kind == "block":
        return "a '{{' block"
    if token.kind == "string":
        return f'"{token.text}"'
    return f"'{token.text}'"


def parse_spec(source: str, path: str) -> Spec:
    return Parser(source, path).parse()


def read_spec_text(path: str | Path) -> str:
    path = Path(path)
    try:
        return path.read_text()
    except OSError as exc:
        raise SpecError(str(path), 1, 1, f"cannot read spec: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(str(path), 1, 1, "spec is not UTF-8 text") from None


def load_spec(path: str | Path) -> Spec:
    return parse_spec(read_spec_text(path), str(path))
