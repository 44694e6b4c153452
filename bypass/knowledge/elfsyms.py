"""What an ELF file exports and needs, read with pyelftools.

Used by the knowledge audit (a libc's dynamic symbols with their GNU symbol versions) and by the
escape report (is a program dynamically linked at all, does it import `syscall`).

GNU symbol versioning in two sentences: `.gnu.version` holds one 16-bit index per `.dynsym` entry,
naming a version defined in `.gnu.version_d`; bit 15 set means the version is *hidden* (`sym@V`:
kept for old binaries, never chosen by the static linker), clear means the default (`sym@@V`).
A symbol exported at several versions appears several times in `.dynsym`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import BypassError

VERSYM_HIDDEN = 0x8000
# e_machine → the architecture names the knowledge files use
MACHINES = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64", "EM_386": "i386", "EM_ARM": "arm",
            "EM_RISCV": "riscv64", "EM_LOONGARCH": "loongarch64", "EM_PPC64": "ppc64le", "EM_S390": "s390x"}
# STT_GNU_IFUNC (memcpy and friends) is shown by pyelftools as STT_LOOS
FUNCTION_TYPES = {"STT_FUNC", "STT_GNU_IFUNC", "STT_LOOS"}


class ElfReadError(BypassError):
    pass


@dataclass(frozen=True, order=True)
class SymbolVersion:
    version: str | None       # "GLIBC_2.33"; None in a library without symbol versioning (musl)
    default: bool             # @@ (default) rather than @ (hidden, compat only)

    @property
    def private(self) -> bool:
        return self.version == "GLIBC_PRIVATE"

    def spelled(self, name: str) -> str:
        if self.version is None:
            return name
        return f"{name}{'@@' if self.default else '@'}{self.version}"


@dataclass
class Exports:
    path: str
    arch: str
    soname: str | None
    symbols: dict[str, list[SymbolVersion]]      # function name → its versions, default first

    def default_version(self, name: str) -> SymbolVersion | None:
        return next((v for v in self.symbols.get(name, ()) if v.default), None)

    def release(self) -> str | None:
        """The newest GLIBC_x.y version the library defines: its glibc release, near enough."""
        found = {v.version for versions in self.symbols.values() for v in versions
                 if v.version and v.version.startswith("GLIBC_2")}
        if not found:
            return None
        return max(found, key=lambda text: tuple(int(p) for p in text[len("GLIBC_"):].split(".")))


def _open_elf(path: str | Path, handle) -> ELFFile:
    try:
        return ELFFile(handle)
    except ELFError as exc:
        raise ElfReadError(f"{path}: not an ELF file ({exc})") from None


def _read(path: str | Path, reader):
    try:
        with open(path, "rb") as handle:
            return reader(_open_elf(path, handle))
    except FileNotFoundError:
        raise ElfReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ElfReadError(f"{path}: is a directory, not an ELF file") from None
    except PermissionError:
        raise ElfReadError(f"{path}: permission denied") from None
    except ELFError as exc:          # a truncated or damaged file fails later than the header
        raise ElfReadError(f"{path}: damaged ELF file ({exc})") from None


def _version_names(elf: ELFFile) -> dict[int, str]:
    section = elf.get_section_by_name(".gnu.version_d")
    if section is None:
        return {}
    return {verdef["vd_ndx"]: next(aux_iter).name for verdef, aux_iter in section.iter_versions()}


def read_exports(path: str | Path) -> Exports:
    """Every function a shared library defines in its dynamic symbol table, with versions."""
    def reader(elf: ELFFile) -> Exports:
        dynsym = elf.get_section_by_name(".dynsym")
        if dynsym is None:
            raise ElfReadError(f"{path}: no dynamic symbol table (.dynsym): not a shared library")
        versym = elf.get_section_by_name(".gnu.version")
        names = _version_names(elf)
        symbols: dict[str, list[SymbolVersion]] = {}
        for index, sym in enumerate(dynsym.iter_symbols()):
            if not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                continue
            if sym["st_info"]["type"] not in FUNCTION_TYPES:
                continue
            version, default = None, True
            if versym is not None:
                ndx = versym.get_symbol(index)["ndx"]
                if isinstance(ndx, int):         # VER_NDX_LOCAL/GLOBAL come back as strings
                    default = not ndx & VERSYM_HIDDEN
                    version = names.get(ndx & ~VERSYM_HIDDEN)
            symbols.setdefault(sym.name, []).append(SymbolVersion(version, default))
        for versions in symbols.values():
            versions.sort(key=lambda v: (not v.default, v.version or ""))
        machine = elf["e_machine"]
        return Exports(path=str(path), arch=MACHINES.get(machine, str(machine)), soname=_soname(elf),
                       symbols=symbols)
    return _read(path, reader)


def _soname(elf: ELFFile) -> str | None:
    dynamic = elf.get_section_by_name(".dynamic")
    if dynamic is None:
        return None
    for tag in dynamic.iter_tags():
        if tag.entry.d_tag == "DT_SONAME":
            return tag.soname
    return None


@dataclass(frozen=True)
class Program:
    path: str
    dynamic: bool                 # has PT_INTERP: ld.so loads it, so LD_PRELOAD applies
    interpreter: str | None
    imports: frozenset[str]       # undefined dynamic symbols (what it takes from libc and friends)


def read_program(path: str | Path) -> Program:
    """Whether an executable goes through the dynamic loader (PT_INTERP) and what it imports."""
    def reader(elf: ELFFile) -> Program:
        interpreter = None
        for segment in elf.iter_segments():
            if segment["p_type"] == "PT_INTERP":
                interpreter = segment.get_interp_name()
        imports: set[str] = set()
        dynsym = elf.get_section_by_name(".dynsym")
        if dynsym is not None:
            imports = {s.name for s in dynsym.iter_symbols() if s.name and s["st_shndx"] == "SHN_UNDEF"}
        return Program(path=str(path), dynamic=interpreter is not None, interpreter=interpreter,
                       imports=frozenset(imports))
    return _read(path, reader)
