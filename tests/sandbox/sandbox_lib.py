"""Build the sandbox support library with gcc and drive it from Python through cffi."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bypass.agents.sandbox import mounts

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = ROOT / "agents" / "sandbox"
RUNTIME = ROOT / "bypass" / "runtime"           # memory.c: the pointer checks resolve.c makes
PATH_MAX = 4096

CDEF = mounts.CDEF + """
struct sb_result { int err; const struct sb_entry *entry; int magic; int is_link; int rel_ok;
                   char vpath[8192]; char rpath[8192]; };
struct sb_stats { unsigned long resolves, lstats, cache_hits, readlinks, fd_hits, fd_misses, memo_hits; };
const struct sb_entry *sb_lookup(const struct sb_mounts *m, const char *vpath);
int sb_mounts_parrot_differs(const struct sb_mounts *m, char *out, size_t outsize);
int sb_translate(const struct sb_entry *e, const char *vpath, char *out, size_t outsize);
int sb_reverse(const struct sb_mounts *m, const char *real, char *out, size_t outsize);
int sb_private_attach(struct sb_mounts *m, const char *dir, char *err, size_t errsize);
int sb_normalise(const char *in, char *out, size_t outsize);
int sb_init_from_env(char *err, size_t errsize);
void sb_install(struct sb_mounts *m, const char *cwd);
void sb_uninstall(void);
const struct sb_mounts *sb_current(void);
int sb_resolve(int op, int dirfd, const char *path, int flags, struct sb_result *r);
int sb_check(const struct sb_entry *e, int op);
int sb_resolve_rename(int, const char *, int, const char *, struct sb_result *, struct sb_result *);
int sb_resolve_link(int, const char *, int, const char *, int, struct sb_result *, struct sb_result *);
int sb_getcwd(char *buf, size_t size);
void sb_set_cwd(const char *vpath);
int sb_fchdir_done(int fd);
void sb_fd_note(int fd, const char *vpath);
void sb_fd_forget(int fd);
void sb_fd_dup(int oldfd, int newfd);
int sb_fd_path(int fd, char *out, size_t outsize);
int sb_reverse_inplace(char *buf, size_t size);
ssize_t sb_readlink(const struct sb_result *r, char *buf, size_t size);
void sb_cache_flush(void);
int sb_exec_check(const char *realpath_, const char *vpath);
int sb_elf_is_static(const char *realpath_);
const char *sb_private_dir(void);
void sb_get_stats(struct sb_stats *s);
void sb_set_cache(int on);
"""

OPS = dict(lookup=0, read=1, write=2, create=3, delete=4, exec=5, chdir=6)
NOFOLLOW, STRICT, EMPTY_OK = 1, 2, 4
AT_FDCWD = -100


def build_library(out_dir: Path) -> Path:
    lib = out_dir / "libsandbox_test.so"
    cmd = ["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-g", "-fPIC", "-shared",
           "-I", str(RUNTIME), "-o", str(lib), str(SANDBOX / "mounts.c"), str(SANDBOX / "resolve.c"),
           str(SANDBOX / "landlock.c"), str(SANDBOX / "spawn_actions.c"), str(RUNTIME / "memory.c")]
    subprocess.run(cmd, check=True)
    return lib


class Sandbox:
    """A thin Python face over the C library (one process-wide instance)."""

    def __init__(self, lib_path: Path):
        import cffi

        self.ffi = cffi.FFI()
        self.ffi.cdef(CDEF)
        self.path = str(lib_path)
        self.lib = self.ffi.dlopen(self.path)

    # --- mount lists
    def parse(self, text: str, file: str = "mounts.txt"):
        m = self.ffi.new("struct sb_mounts *")
        err = self.ffi.new("char[]", 1024)
        rc = self.lib.sb_mounts_parse(m, text.encode(), file.encode(), err, 1024)
        if rc != 0:
            return None, self.ffi.string(err).decode()
        return m, None

    def install(self, text: str, cwd: str | None = "/", private: str | None = None):
        m, err = self.parse(text)
        assert err is None, err
        if private is not None:
            e = self.ffi.new("char[]", 1024)
            assert self.lib.sb_private_attach(m, private.encode(), e, 1024) == 0, \
                self.ffi.string(e).decode()
        self.lib.sb_install(m, cwd.encode() if cwd else self.ffi.NULL)

    # --- resolution
    def resolve(self, op: str, path: str, flags: int = 0, dirfd: int = AT_FDCWD):
        r = self.ffi.new("struct sb_result *")
        rc = self.lib.sb_resolve(OPS[op], dirfd, path.encode(), flags, r)
        return rc, self.ffi.string(r.vpath).decode(), self.ffi.string(r.rpath).decode(), r

    def real(self, op: str, path: str, flags: int = 0, dirfd: int = AT_FDCWD):
        rc, _v, rp, _r = self.resolve(op, path, flags, dirfd)
        return rp if rc == 0 else rc

    def getcwd(self) -> str:
        buf = self.ffi.new("char[]", PATH_MAX)
        assert self.lib.sb_getcwd(buf, PATH_MAX) == 0
        return self.ffi.string(buf).decode()

    def fd_path(self, fd: int):
        buf = self.ffi.new("char[]", PATH_MAX)
        rc = self.lib.sb_fd_path(fd, buf, PATH_MAX)
        return self.ffi.string(buf).decode() if rc == 0 else rc

    def reverse(self, real: str) -> str:
        buf = self.ffi.new("char[]", PATH_MAX)
        buf[0:len(real.encode()) + 1] = real.encode() + b"\0"
        assert self.lib.sb_reverse_inplace(buf, PATH_MAX) == 0
        return self.ffi.string(buf).decode()

    def readlink(self, path: str):
        rc, _v, _rp, r = self.resolve("lookup", path, NOFOLLOW)
        if rc:
            return rc
        buf = self.ffi.new("char[]", PATH_MAX)
        n = self.lib.sb_readlink(r, buf, PATH_MAX)
        return -n if n < 0 else self.ffi.buffer(buf, n)[:].decode()

    def stats(self):
        s = self.ffi.new("struct sb_stats *")
        self.lib.sb_get_stats(s)
        return {k: getattr(s, k) for k in
                ("resolves", "lstats", "cache_hits", "readlinks", "fd_hits", "fd_misses", "memo_hits")}


