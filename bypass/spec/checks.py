"""Checks on a parsed spec that need the knowledge base: names that trap nothing, and calls whose
siblings the spec leaves out (the programs a user tries first often take the sibling)."""

from __future__ import annotations

import difflib
import fnmatch

from ..errors import SpecError
from ..knowledge.loader import Knowledge
from .model import Function, Spec

# Calls that do the same operation on a path, whichever one a program happens to use: `rm` calls
# unlinkat, `cp` openat, stdio fopen (whose own open is libc-internal, invisible to a preload).
# The knowledge families group by symbol and are wider (the unlink family holds rmdir, the cwd
# family both chdir and realpath), so the operation is said here.
SAME_OPERATION = (
    ("open", "openat", "creat", "fopen", "freopen"),
    ("unlink", "unlinkat", "remove"),
    ("rmdir", "unlinkat", "remove"),
    ("stat", "lstat", "fstatat", "statx"),
    ("access", "faccessat", "euidaccess"),
    ("chmod", "fchmodat", "lchmod"),
    ("chown", "lchown", "fchownat"),
    ("mkdir", "mkdirat"),
    ("mknod", "mknodat"),
    ("mkfifo", "mkfifoat"),
    ("link", "linkat"),
    ("symlink", "symlinkat"),
    ("rename", "renameat", "renameat2"),
    ("readlink", "readlinkat"),
    ("utime", "utimes", "lutimes", "futimesat", "utimensat"),
    ("opendir", "scandir", "scandirat", "nftw", "ftw"),
    ("realpath", "canonicalize_file_name"),
    ("getxattr", "lgetxattr"),
    ("setxattr", "lsetxattr"),
    ("listxattr", "llistxattr"),
    ("removexattr", "lremovexattr"),
    ("statfs", "statvfs"),
    ("truncate",),
    ("mkstemp", "mkostemp", "mkstemps", "mkostemps"),
)


def _libc_functions() -> set[str]:
    from ..knowledge.audit import running_libc
    from ..knowledge.elfsyms import read_exports
    return set(read_exports(running_libc()).symbols)


def check_names(spec: Spec, knowledge: Knowledge) -> None:
    """A declared name that is neither a known call nor a libc function would export a symbol no
    program calls: a misspelt call (`opne`) that builds and silently catches nothing."""
    entries = knowledge.by_symbol()
    aliased = {pattern for rule in spec.options if rule.keyword == "entry" for pattern in rule.patterns}
    # A call with a shadow_action and no agent_action is an RPC of the spec's own (the remote
    # agent's bypass_rx_*): its support code calls bypass_shadow_<name>(), no program calls it.
    unknown = [f for f in spec.functions
               if not (f.shadow_action and not f.agent_action)
               and f.name not in knowledge.calls and f.name not in entries
               and not any(fnmatch.fnmatchcase(f.name, p) for p in aliased)]
    if not unknown:
        return
    libc = _libc_functions()
    for function in unknown:
        if function.name in libc:
            continue
        close = difflib.get_close_matches(function.name, sorted(knowledge.calls), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
            " (run `bypass knowledge list` for the calls Bypass knows)"
        raise SpecError(spec.path, function.at.line, function.at.col,
                        f"'{function.name}' is neither a call Bypass knows nor a function of the C library{hint}",
                        spec.source)


def _quiet(spec: Spec, name: str) -> bool:
    return any(rule.keyword == "quiet_family" and any(fnmatch.fnmatchcase(name, p) for p in rule.patterns)
               for rule in spec.options)


def siblings(function: Function, knowledge: Knowledge) -> list[str]:
    """Other calls that do what this one does. A call in two groups (unlinkat removes files and
    directories) is the general form: only the narrow call that leads a group (unlink, rmdir)
    is told about it, not the other way round."""
    groups = [group for group in SAME_OPERATION if function.name in group]
    if len(groups) > 1:
        groups = [group for group in groups if group[0] == function.name]
    found: list[str] = []
    for group in groups:
        found += [name for name in group if name != function.name and name not in found
                  and name in knowledge.calls]
    return found


def family_warnings(spec: Spec, knowledge: Knowledge) -> list[str]:
    declared = {f.name for f in spec.functions}
    warnings = []
    for function in spec.functions:
        if _quiet(spec, function.name):
            continue
        missing = [name for name in siblings(function, knowledge) if name not in declared]
        if missing:
            warnings.append(
                f"{spec.path}:{function.at.line}:{function.at.col}: warning: programs also do what "
                f"'{function.name}' does through {', '.join(missing)}, which this spec does not catch "
                f"(declare them too, or silence this with options \"{function.name}\" quiet_family; "
                f"or --quiet-family)")
    return warnings
