"""`bypass knowledge audit`: hold the knowledge files against a real libc.

Interposition tools go blind silently: a libc release adds an alias (`__open64_2`, `fstatat64`,
`statx`) and the agent never sees the calls that bind to it. The audit reads a libc's dynamic
symbol table and says, per call family of families.toml:

* gaps: symbols the libc exports in a family the knowledge covers, but no knowledge entry names
  (exit status 1: an agent built from this knowledge would miss them);
* knowledge entries this libc does not export, or exports at another version than the entry says;
* multi-versioned symbols, and whether the knowledge reaches the right version (`dlvsym`, `also`);
* GLIBC_PRIVATE symbols in file families (only other DSOs of libc can bind to them);
* families the knowledge does not cover at all, with what the libc exports for them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BypassError
from .elfsyms import Exports, SymbolVersion, read_exports
from .loader import BASE_VERSIONS, DEFAULT_PLATFORM, KNOWLEDGE_DIR, Call, Entry, Knowledge, load_files

FAMILIES_FILE = KNOWLEDGE_DIR / "families.toml"


class AuditError(BypassError):
    pass


# --- inputs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    name: str
    about: str
    why: str | None
    patterns: tuple[re.Pattern, ...]

    def matches(self, symbol: str) -> bool:
        return any(p.fullmatch(symbol) for p in self.patterns)


def load_families(path: Path = FAMILIES_FILE) -> list[Family]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AuditError(f"{path}: no such families file") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuditError(f"{path}: {exc}") from None
    families = []
    for name, table in data.items():
        if not isinstance(table, dict) or not table.get("patterns"):
            raise AuditError(f"{path}: [{name}]: a family needs a 'patterns' list")
        try:
            patterns = tuple(re.compile(p) for p in table["patterns"])
        except re.error as exc:
            raise AuditError(f"{path}: [{name}]: bad pattern: {exc}") from None
        families.append(Family(name, table.get("about", ""), table.get("why"), patterns))
    return families


def load_knowledge_dir(folder: str | Path) -> Knowledge:
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditError(f"{folder}: not a knowledge directory")
    files = list(folder.glob("*.toml"))
    if not files:
        raise AuditError(f"{folder}: no knowledge files (*.toml)")
    return load_files(files)


def running_libc() -> Path:
    """The libc this very process runs on: it is the one programs here will run on too."""
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if re.search(r"/libc(\.so\.\d+|-[\d.]+\.so)$", path):
                return Path(path)
    except OSError:
        pass
    # No /proc (a container without it): ask the loader's cache.
    try:
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        listing = ""
    for line in listing.splitlines():
        if line.strip().startswith("libc.so.6 ") and "=>" in line:
            return Path(line.split("=>")[1].strip())
    raise AuditError("cannot find the running libc (no /proc/self/maps, no ldconfig); give --libc PATH")


# --- the report -------------------------------------------------------------------------------

@dataclass
class Finding:
    symbol: str
    family: str | None = None
    call: str | None = None
    exported: list[str] = field(default_factory=list)      # sym@@V / sym@V as the libc has them
    expected: str | None = None
    problem: str | None = None


@dataclass
class Report:
    libc: str
    arch: str
    release: str | None
    knowledge: str
    covered: dict[str, dict]
    not_covered: dict[str, dict]
    unchecked_families: list[str]
    gaps: list[Finding]
    not_exported: list[Finding]
    version_mismatches: list[Finding]
    multi_versioned: list[Finding]
    private: list[Finding]
    unclassified: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.gaps

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def _spell(name: str, versions: list[SymbolVersion]) -> list[str]:
    return [v.spelled(name) for v in versions]


def _family_of(symbol: str, families: list[Family]) -> Family | None:
    return next((f for f in families if f.matches(symbol)), None)


def _check_entry(call: Call, entry: Entry, exports: Exports) -> Finding | None:
    """Does the libc export this entry at the version the knowledge says? None when it does."""
    versions = exports.symbols[entry.symbol]
    found = _spell(entry.symbol, versions)
    default = exports.default_version(entry.symbol)
    finding = Finding(entry.symbol, call.family, call.name, found)
    if entry.private:
        # Private means "listed for the audit, never exported by an agent": GLIBC_PRIVATE, or a
        # compat-only symbol (no default version) that no new binary can bind to.
        if default is not None and not default.private:
            finding.problem = f"marked private, but exported publicly as {default.spelled(entry.symbol)}"
            return finding
        return None
    if exports.arch not in BASE_VERSIONS or default is None or default.version is None:
        if default is None:
            finding.problem = "only hidden (compat) versions: new binaries cannot bind to it"
            return finding
        return None                   # no version scheme we know (musl, another arch): presence is enough
    expected = entry.version(exports.arch)
    finding.expected = expected
    if default.version != expected:
        finding.problem = f"default version is {default.version}, the knowledge says {expected} (since)"
        return finding
    hidden = {v.version for v in versions if not v.default}
    missing_old = [v for v in entry.old_versions(exports.arch) if v not in hidden]
    if missing_old:
        finding.problem = f"'also' names {', '.join(missing_old)}, which this libc does not export"
        return finding
    return None


def _check_multi(call: Call, entry: Entry, exports: Exports) -> Finding:
    """A symbol with several versions: an unversioned wrapper catches them all, but dlsym finds
    only the default, so the knowledge must say `dlvsym` and list the old ones in `also`."""
    versions = exports.symbols[entry.symbol]
    finding = Finding(entry.symbol, call.family, call.name, _spell(entry.symbol, versions))
    old = sorted(v.version for v in versions if not v.default and v.version)
    listed = set(entry.old_versions(exports.arch)) if exports.arch in BASE_VERSIONS else set(old)
    problems = []
    if not entry.dlvsym:
        problems.append("needs dlvsym = true")
    unlisted = [v for v in old if v not in listed]
    if unlisted:
        problems.append(f"'also' lacks {', '.join(unlisted)}")
    finding.problem = "; ".join(problems) or None
    return finding


def audit(knowledge: Knowledge, families: list[Family], exports: Exports, knowledge_name: str = "") -> Report:
    by_symbol = knowledge.by_symbol()
    known_families = {f.name for f in families}
    covered_names = {call.family for call in knowledge.calls.values()}
    covered = {f.name: {"about": f.about, "symbols": [], "gaps": []} for f in families if f.name in covered_names}
    not_covered = {f.name: {"about": f.about, "why": f.why, "symbols": []}
                   for f in families if f.name not in covered_names}
    gaps, private = [], []

    for symbol in sorted(exports.symbols):
        family = _family_of(symbol, families)
        if family is None:
            continue
        versions = exports.symbols[symbol]
        spelled = _spell(symbol, versions)
        known = by_symbol.get(symbol)
        if any(v.private for v in versions):
            private.append(Finding(symbol, family.name, known[0].name if known else None, spelled))
        if family.name in not_covered:
            not_covered[family.name]["symbols"].extend(spelled)
            continue
        covered[family.name]["symbols"].extend(spelled)
        if known is None:
            covered[family.name]["gaps"].append(symbol)
            gaps.append(Finding(symbol, family.name, exported=spelled,
                                problem=f"exported in covered family '{family.name}' but no knowledge entry names it"))

    not_exported, mismatches, multi, unclassified = [], [], [], []
    for call in knowledge.calls.values():
        for entry in call.entries:
            if entry.arch and exports.arch not in entry.arch:
                continue                                  # the knowledge says: not on this architecture
            family = _family_of(entry.symbol, families)
            if family is None or family.name != call.family:
                unclassified.append(Finding(entry.symbol, call.family, call.name,
                                            problem=f"families.toml puts it in "
                                                    f"{repr(family.name) if family else 'no family'}"))
            if entry.symbol not in exports.symbols:
                not_exported.append(Finding(entry.symbol, call.family, call.name,
                                            expected=None if entry.private or exports.arch not in BASE_VERSIONS
                                            else entry.version(exports.arch),
                                            problem="this libc does not export it"))
                continue
            problem = _check_entry(call, entry, exports)
            if problem:
                mismatches.append(problem)
            if len(exports.symbols[entry.symbol]) > 1:
                multi.append(_check_multi(call, entry, exports))

    unchecked = sorted(covered_names - known_families)
    return Report(libc=exports.path, arch=exports.arch, release=exports.release(), knowledge=knowledge_name,
                  covered=covered, not_covered=not_covered, unchecked_families=unchecked, gaps=gaps,
                  not_exported=not_exported, version_mismatches=mismatches, multi_versioned=multi,
                  private=private, unclassified=unclassified)


# --- output -----------------------------------------------------------------------------------

def _wrap(items: list[str], indent: str = "      ", width: int = 100) -> list[str]:
    lines, line = [], indent
    for item in items:
        if len(line) + len(item) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += item + " "
    if line.strip():
        lines.append(line.rstrip())
    return lines


def render_text(report: Report) -> str:
    out = [f"libc:      {report.libc} ({report.arch}, {report.release or 'unversioned'})",
           f"knowledge: {report.knowledge}", ""]
    out.append(f"Covered families ({len(report.covered)}):")
    for name, info in sorted(report.covered.items()):
        status = f"GAP: {', '.join(info['gaps'])}" if info["gaps"] else "ok"
        out.append(f"  {name:10} {len(info['symbols']):3} exported symbols  {status}")
    if report.gaps:
        out += ["", f"Gaps ({len(report.gaps)}): exported by libc, missing from the knowledge:"]
        out += [f"  {g.family:10} {' '.join(g.exported)}" for g in report.gaps]
    if report.unchecked_families:
        out += ["", "Knowledge families with no patterns in families.toml (not checked for gaps): "
                + ", ".join(report.unchecked_families)]
    out += ["", "Knowledge entries this libc does not export:" if report.not_exported
            else "Every knowledge entry is exported by this libc."]
    out += [f"  {f.symbol:22} ({f.call}){'  expected ' + f.expected if f.expected else ''}"
            for f in report.not_exported]
    out += ["", "Version mismatches:" if report.version_mismatches else "No version mismatches."]
    out += [f"  {f.symbol:22} ({f.call}) {f.problem}; libc has {' '.join(f.exported)}"
            for f in report.version_mismatches]
    out += ["", "Multi-versioned symbols in the knowledge:"]
    out += [f"  {' '.join(f.exported):60} {'NEEDS FIX: ' + f.problem if f.problem else 'ok (dlvsym, also)'}"
            for f in report.multi_versioned] or ["  (none)"]
    out += ["", "GLIBC_PRIVATE symbols in file families (only libc's own DSOs can bind to them):"]
    out += [f"  {f.family:10} {f.symbol:26} {'knowledge: ' + f.call + ' (private)' if f.call else 'not in the knowledge'}"
            for f in report.private] or ["  (none)"]
    if report.unclassified:
        out += ["", "Knowledge entries whose family disagrees with families.toml:"]
        out += [f"  {f.symbol:22} ({f.call}, family {f.family}): {f.problem}" for f in report.unclassified]
    out += ["", "Not covered by the knowledge (an agent built from it cannot trap these at all):"]
    for name, info in sorted(report.not_covered.items()):
        if not info["symbols"]:
            continue
        out.append(f"  {name}: {info['about']}" + (f" — {info['why']}" if info["why"] else ""))
        out += _wrap(info["symbols"])
    out += ["", f"Result: {'no gaps' if report.ok else str(len(report.gaps)) + ' gap(s)'} in "
                f"{len(report.covered)} covered families."]
    return "\n".join(out) + "\n"


# --- command line -----------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bypass knowledge audit",
        description="Compare the knowledge files with the dynamic symbol table of a libc. "
                    "Exit status: 0 no gaps, 1 a covered family has a gap, 2 bad input.")
    parser.add_argument("--libc", metavar="PATH", help="the libc.so.6 to audit (default: the running one)")
    parser.add_argument("--knowledge", metavar="DIR",
                        help=f"folder of knowledge *.toml files (default: the shipped {DEFAULT_PLATFORM})")
    parser.add_argument("--families", metavar="FILE", help="families file (default: the shipped families.toml)")
    parser.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    args = parser.parse_args(argv)
    try:
        libc = Path(args.libc) if args.libc else running_libc()
        folder = Path(args.knowledge) if args.knowledge else KNOWLEDGE_DIR / DEFAULT_PLATFORM
        knowledge = load_knowledge_dir(folder)
        families = load_families(Path(args.families) if args.families else FAMILIES_FILE)
        report = audit(knowledge, families, read_exports(libc), str(folder))
    except BypassError as exc:
        print(f"bypass knowledge audit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        sys.stdout.write(render_text(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
