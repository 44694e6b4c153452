"""How `bypass conform` shows a divergence: side by side, and as a C program that reproduces it."""
from __future__ import annotations

from .engine import EXECUTOR_SOURCE, Divergence
from .ops import INITIAL_TREE, NEST, c_string





def reproduction(div: Divergence) -> str:
    """A C program that lays out the initial tree in ./w and runs the steps, printing one
    `ID RET ERRNO DATA` line each; run it natively and under the agent and compare."""
    lines = [
        f"/* bypass conform reproduction ({div.seed}): {div.title()}",
        " * cc -o repro repro.c && mkdir t && cd t && ../repro      (then again under the agent) */",
        "#define CONFORM_SNIPPET",
        f'#include "{EXECUTOR_SOURCE}"',
        "",
        "static void lay(const char *name, const char *data, size_t n, mode_t mode)",
        "{",
        "    int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, mode);",
        "    if (fd < 0 || write(fd, data, n) != (ssize_t)n || fchmod(fd, mode) < 0 || close(fd) < 0)",
        "        perror(name), exit(1);",
        "}",
        "",
        "int main(void)",
        "{",
        "    char here[PATH_MAX], target[PATH_MAX + 8];",
        f"    for (int level = 1; level < {NEST}; level++)     /* what the steps climb stays in here */",
        "        if (mkdir(\"w\", 0755) < 0 || chdir(\"w\") < 0)",
        "            return perror(\"w\"), 1;",
        "    if (!getcwd(here, sizeof here - 3) || mkdir(\"w\", 0755) < 0)",
        "        return perror(\"w\"), 1;",
        "    strcat(here, \"/w\");",
    ]
    for name, kind, mode, content in INITIAL_TREE:
        path = c_string(b"w/" + (name if isinstance(name, bytes) else name.encode()))
        if kind == "dir":
            lines.append(f"    mkdir({path}, 0{mode:o});")
        elif kind == "file" and len(content) <= 64:
            lines.append(f"    lay({path}, {c_string(content)}, {len(content)}, 0{mode:o});")
        elif kind == "file":             # long files repeat their first 16 bytes
            lines.append(f"    {{ char b[{len(content)}]; for (int i = 0; i < {len(content)}; i++) "
                         f"b[i] = {c_string(content[:16])}[i % 16]; lay({path}, b, sizeof b, 0{mode:o}); }}")
        elif b"$ROOT" in content:
            target = content.replace(b"$ROOT", b"%s")
            lines.append(f"    snprintf(target, sizeof target, {c_string(target)}, here);")
            lines.append(f"    symlink(target, {path});")
        else:
            lines.append(f"    symlink({c_string(content)}, {path});")
    lines.append("    if (conform_init(here) < 0)")
    lines.append("        return 1;")
    for step in div.steps:
        lines.append(f'    STEP("{step.line()}");    /* {step.c()} */')
    lines.append("    return 0;")
    lines.append("}")
    return "\n".join(lines)


def text(div: Divergence, verbose_c: bool = True) -> str:
    head = "expected" if div.expected else "UNEXPECTED"
    out = [f"{head} {div.title()}"]
    if div.expected:
        out.append(f"  reason: {div.expected}")
    if div.kind != "tree":
        out.append(f"  native: {div.native}")
        out.append(f"  agent:  {div.agent}")
    for line in div.detail[:12]:
        if line:
            out.append(f"  {line}")
    out.append(f"  minimal sequence ({len(div.steps)} step{'s' if len(div.steps) != 1 else ''}, {div.seed}):")
    out.extend(f"    {s.id:3}  {s.c()}" for s in div.steps)
    if verbose_c and not div.expected:
        out.append("  reproduction in C:")
        out.extend("    " + line for line in reproduction(div).splitlines())
    return "\n".join(out)


def as_json(div: Divergence) -> dict:
    return {
        "kind": div.kind,
        "title": div.title(),
        "expected": div.expected is not None,
        "reason": div.expected,
        "step": div.step.c() if div.step else None,
        "native": div.native,
        "agent": div.agent,
        "detail": div.detail,
        "sequence": [s.c() for s in div.steps],
        "script": [s.line() for s in div.steps],
        "seed": div.seed,
        "reproduction": reproduction(div),
    }
