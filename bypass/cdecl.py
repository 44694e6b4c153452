"""C declarations (from specs and knowledge files) parsed with pycparser.

pycparser needs to know every typedef name, but a spec must not carry the system headers, so the
parse starts from a prelude that names the usual system types. The generated agent includes the
real headers; the prelude only has to make the declarations parse.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from pycparser import c_ast, c_generator, c_parser

from .errors import SpecError

# Opaque stand-ins: only the names matter to the parser.
_INTEGER_TYPEDEFS = {
    "size_t": "unsigned long", "ssize_t": "long", "off_t": "long", "off64_t": "long",
    "loff_t": "long", "__off64_t": "long", "__off_t": "long", "mode_t": "unsigned int",
    "dev_t": "unsigned long", "ino_t": "unsigned long", "ino64_t": "unsigned long",
    "uid_t": "unsigned int", "gid_t": "unsigned int", "pid_t": "int", "id_t": "unsigned int",
    "nlink_t": "unsigned long", "time_t": "long", "blksize_t": "long", "blkcnt_t": "long",
    "socklen_t": "unsigned int", "intptr_t": "long", "uintptr_t": "unsigned long",
    "int8_t": "signed char", "int16_t": "short", "int32_t": "int", "int64_t": "long",
    "uint8_t": "unsigned char", "uint16_t": "unsigned short", "uint32_t": "unsigned int",
    "uint64_t": "unsigned long", "__u32": "unsigned int", "__u64": "unsigned long",
    "wchar_t": "int", "key_t": "int", "clockid_t": "int", "useconds_t": "unsigned int",
    "fsblkcnt_t": "unsigned long", "fsfilcnt_t": "unsigned long", "nfds_t": "unsigned long",
    "rlim_t": "unsigned long", "sig_atomic_t": "int",
}
_OPAQUE_TYPEDEFS = {
    "FILE": "struct _IO_FILE", "DIR": "struct __dirstream", "va_list": "struct __va_list_tag",
    "fpos_t": "struct _G_fpos_t", "fpos64_t": "struct _G_fpos64_t",
    "posix_spawn_file_actions_t": "struct __posix_spawn_file_actions",
    "posix_spawnattr_t": "struct __posix_spawnattr", "glob_t": "struct __glob_t",
    "glob64_t": "struct __glob64_t", "cookie_io_functions_t": "struct __cookie_io_functions",
    "sigset_t": "struct __sigset", "fd_set": "struct __fd_set", "locale_t": "struct __locale_struct *",
    "pthread_t": "unsigned long", "FTS": "struct __fts", "FTSENT": "struct _ftsent",
    "acl_t": "struct __acl *", "nl_catd": "void *", "iconv_t": "void *", "regex_t": "struct __regex",
    "mbstate_t": "struct __mbstate", "wint_t": "unsigned int", "cpu_set_t": "struct __cpu_set",
}
# Function-pointer typedefs that appear in libc prototypes.
_FUNCTION_TYPEDEFS = [
    "typedef int (*__ftw_func_t)(const char *, const struct stat *, int);",
    "typedef int (*__nftw_func_t)(const char *, const struct stat *, int, struct FTW *);",
    "typedef int (*__ftw64_func_t)(const char *, const struct stat64 *, int);",
    "typedef int (*__nftw64_func_t)(const char *, const struct stat64 *, int, struct FTW *);",
    "typedef int (*__compar_fn_t)(const void *, const void *);",
]


def _prelude_lines() -> dict[str, str]:
    """Each stand-in typedef, by the name it declares."""
    lines = {name: f"typedef {base} {name};" for name, base in _INTEGER_TYPEDEFS.items()}
    lines.update({name: f"typedef {base} {name};" for name, base in _OPAQUE_TYPEDEFS.items()})
    lines.update({re.search(r"\(\*(\w+)\)", line)[1]: line for line in _FUNCTION_TYPEDEFS})
    return lines


_PRELUDE_LINES = _prelude_lines()
_WORD = re.compile(r"[A-Za-z_]\w*")


def _prelude_for(text: str) -> str:
    """The typedefs `text` names. A typedef the text does not name cannot change its parse, and
    pycparser's time goes mostly into the prelude: the knowledge base's few hundred declarations,
    each with the whole prelude, took seconds of every build."""
    names = set(_WORD.findall(text))
    return "".join(line + "\n" for name, line in _PRELUDE_LINES.items() if name in names)
KNOWN_TYPE_NAMES = frozenset(_INTEGER_TYPEDEFS) | frozenset(_OPAQUE_TYPEDEFS) | {
    "__ftw_func_t", "__nftw_func_t", "__ftw64_func_t", "__nftw64_func_t", "__compar_fn_t"}

_generator = c_generator.CGenerator()
_INTEGER_WORDS = {"char", "short", "int", "long", "signed", "unsigned", "_Bool"}
_declarations: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class CType:
    """A C type, held as a pycparser declarator whose name has been removed."""

    node: c_ast.Node = field(compare=False, repr=False)
    text: str

    @staticmethod
    def of(decl_type: c_ast.Node) -> "CType":
        node = _chain_copy(decl_type)
        _rename(node, None)
        return CType(node, _generator.visit(node).strip())

    def declare(self, name: str) -> str:
        """This type declaring `name`, e.g. `char *const argv[]` style placement for pointers to functions."""
        key = (self.text, name)         # the text names the type whole: same text, same declaration
        if key not in _declarations:    # a large agent declares the same few thousand times
            node = _chain_copy(self.node)
            _rename(node, name)
            _declarations[key] = _generator.visit(c_ast.Decl(name, [], [], [], [], node, None, None)).strip()
        return _declarations[key]

    @property
    def is_void(self) -> bool:
        return isinstance(self.node, c_ast.TypeDecl) and _names(self.node) == ["void"]

    @property
    def is_pointer(self) -> bool:
        return isinstance(self.node, c_ast.PtrDecl)

    @property
    def is_function_pointer(self) -> bool:
        return isinstance(self.node, c_ast.PtrDecl) and isinstance(self.node.type, c_ast.FuncDecl)

    @property
    def is_char_pointer(self) -> bool:
        """`char *` or `const char *`: what a C string is passed as."""
        return self.is_pointer and isinstance(self.node.type, c_ast.TypeDecl) and _names(self.node.type) == ["char"]

    @property
    def is_string_array(self) -> bool:
        """`char *const *` and friends: argv and envp."""
        if not self.is_pointer:
            return False
        inner = CType(self.node.type, "")
        return inner.is_char_pointer

    @property
    def is_integer(self) -> bool:
        if not isinstance(self.node, c_ast.TypeDecl):
            return False
        names = _names(self.node)
        if names and all(n in _INTEGER_WORDS for n in names):
            return True
        return len(names) == 1 and names[0] in _INTEGER_TYPEDEFS

    @property
    def is_unsigned(self) -> bool:
        names = _names(self.node) if isinstance(self.node, c_ast.TypeDecl) else []
        if len(names) == 1 and names[0] in _INTEGER_TYPEDEFS:
            return _INTEGER_TYPEDEFS[names[0]].startswith("unsigned")
        return "unsigned" in names

    @property
    def pointee(self) -> "CType | None":
        if not self.is_pointer:
            return None
        return CType.of(self.node.type)

    @property
    def is_const_pointee(self) -> bool:
        return self.is_pointer and "const" in getattr(self.node.type, "quals", [])


@dataclass(frozen=True)
class CParam:
    name: str
    type: CType

    def declare(self, name: str | None = None) -> str:
        return self.type.declare(name or self.name)


@dataclass(frozen=True)
class CFunction:
    name: str
    ret: CType
    params: tuple[CParam, ...]
    variadic: bool

    def prototype(self, name: str | None = None, param_names: list[str] | None = None) -> str:
        names = param_names or [p.name for p in self.params]
        parts = [p.type.declare(n) for p, n in zip(self.params, names)]
        if self.variadic:
            parts.append("...")
        args = ", ".join(parts) if parts else "void"
        return self.ret.declare(f"{name or self.name}({args})")

    def pointer_type(self, typedef_name: str) -> str:
        """A typedef for a pointer to this function."""
        parts = [p.type.text for p in self.params] + (["..."] if self.variadic else [])
        args = ", ".join(parts) or "void"
        return "typedef " + self.ret.declare(f"(*{typedef_name})({args})") + ";"


def _names(node: c_ast.Node) -> list[str]:
    inner = getattr(node, "type", None)
    return list(getattr(inner, "names", []) or [])


def _chain_copy(node: c_ast.Node) -> c_ast.Node:
    """A copy of the declarator chain down to the TypeDecl, the only nodes _rename changes; the
    rest (specifiers, parameter lists) is shared: nothing changes a parsed node elsewhere. A deep
    copy of each declaration was a third of a large spec's planning time."""
    top = node = copy.copy(node)
    while not isinstance(node, c_ast.TypeDecl):
        node.type = copy.copy(node.type)
        node = node.type
    return top


def _rename(node: c_ast.Node, name: str | None) -> None:
    while not isinstance(node, c_ast.TypeDecl):
        if isinstance(node, c_ast.FuncDecl):
            node = node.type
            continue
        node = node.type
    node.declname = name


def _decay(node: c_ast.Node) -> c_ast.Node:
    """Array parameters are pointers (C11 6.7.6.3p7): `char *const argv[]` is `char *const *argv`."""
    if isinstance(node, c_ast.ArrayDecl):
        return c_ast.PtrDecl(list(node.dim_quals or []), node.type)
    return node


_PYCPARSER_ERROR = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.*)$", re.S)


def _parse(text: str, path: str, line: int, col: int, source: str | None, prefix: str = "") -> c_ast.FileAST:
    """Parse `prefix + text`, reporting errors at the spec position where `text` starts."""
    padded = _prelude_for(text) + f'# {line} "{path}"\n' + prefix + text + "\n"
    try:
        return c_parser.CParser().parse(padded, filename=path)
    except c_parser.ParseError as exc:
        found = _PYCPARSER_ERROR.match(str(exc))
        if not found:
            raise SpecError(path, line, col, f"cannot parse C declaration: {exc}", source) from None
        msg = found["msg"]
        if msg.startswith("before: "):
            msg = f"unexpected '{msg[8:]}' in C declaration (is a type name unknown?)"
        err_line, err_col = int(found["line"]), int(found["col"])
        if err_line == line:
            err_col = max(err_col - len(prefix), 1) + col - 1
        raise SpecError(path, err_line, err_col, msg, source) from None


def parse_function(text: str, path: str = "<knowledge>", line: int = 1, col: int = 1,
                   source: str | None = None) -> CFunction:
    """Parse one function prototype (no trailing semicolon needed)."""
    text = text.strip().rstrip(";")
    ast = _parse(text + ";", path, line, col, source)
    decl = ast.ext[-1]
    if not isinstance(decl, c_ast.Decl) or not isinstance(decl.type, c_ast.FuncDecl):
        raise SpecError(path, line, col, "expected a function declaration", source)
    func = decl.type
    params: list[CParam] = []
    variadic = False
    for index, param in enumerate(func.args.params if func.args else []):
        if isinstance(param, c_ast.EllipsisParam):
            variadic = True
            continue
        if isinstance(param, c_ast.Typename):
            if CType.of(param.type).is_void and len(func.args.params) == 1:
                break
            raise SpecError(path, line, col, f"parameter {index + 1} of {decl.name} has no name", source)
        params.append(CParam(param.name, CType.of(_decay(param.type))))
    return CFunction(decl.name, CType.of(func.type), tuple(params), variadic)


def parse_param(text: str, path: str, line: int, col: int, source: str | None = None) -> CParam:
    """Parse one parameter declaration such as `const char *path` at a known spec position."""
    ast = _parse(text + ");", path, line, col, source, prefix="void __bypass_probe(")
    param = ast.ext[-1].type.args.params[0]
    if isinstance(param, c_ast.EllipsisParam):
        raise SpecError(path, line, col, "write varargs as [ type name ], not '...'", source)
    if isinstance(param, c_ast.Typename) or not param.name:
        raise SpecError(path, line, col, "parameter needs a name", source)
    return CParam(param.name, CType.of(_decay(param.type)))
