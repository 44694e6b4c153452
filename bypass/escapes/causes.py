"""Why a system call escaped the agent: the causes the report groups by.

Most escapes are libc reaching a file through its own hidden aliases (nss reading /etc/passwd,
setlocale mapping LC_* files, tzset reading /etc/localtime, ld.so mapping libraries). Those are
recognised by the file they touch. The rest are told apart by what the process did: a trapped
call whose internals made the syscall (realpath's readlinks, execvp's PATH search), a stdio or
DIR stream doing I/O behind a trapped fopen/opendir, a call the knowledge does not cover, a
static binary, the program using syscall() itself.
"""

from __future__ import annotations

import re

# cause → label shown to people (the JSON keeps both)
CAUSES: dict[str, str] = {
    "nss": "nss: user, group and host databases (/etc/nsswitch.conf, passwd, group, hosts…)",
    "locale": "locale: locale-archive, LC_* files, locale.alias, gconv modules, message catalogs",
    "loader": "dynamic loader: ld.so.cache and shared objects mapped before main or by dlopen",
    "timezone": "time zone: /etc/localtime and zoneinfo read by tzset/localtime",
    "sysinfo": "libc reading system information (/proc, /sys for sysconf, nprocs, ttyname…)",
    "stdio_dir": "stdio/dir internals: I/O on a FILE* or DIR* through hidden __read/__getdents64/__close",
    "libc_helper": "inside a trapped call: realpath/nftw components, execvp PATH search, tmpfile/mkstemp",
    "not_covered": "a call the knowledge does not cover (statfs, mmap, fsync…)",
    "agent": "the agents themselves: loading the agent .so files, writing the trace log",
    "launcher": "the exec that starts the command (made before any agent is loaded)",
    "static": "static binary: no dynamic loader, so no LD_PRELOAD agent — wholly invisible",
    "syscall": "syscall() used directly (the program imports syscall)",
    "other": "other: nothing explains it (a knowledge gap, or a matching bug)",
}

_NSS = re.compile(r"^/etc/(nsswitch\.conf|passwd|group|shadow|gshadow|hosts|host\.conf|resolv\.conf|gai\.conf|"
                  r"services|protocols|networks|ethers|netgroup|aliases|rpc|shells)$|/libnss_[^/]*\.so")
_LOCALE = re.compile(r"^/usr/lib/locale/|^/usr/share/locale/|^/usr/share/locale-langpack/|/locale\.alias$|"
                     r"/gconv/|/LC_[A-Z_]+$|\.mo$|^/usr/share/i18n/")
_TIMEZONE = re.compile(r"^/etc/localtime$|^/usr/share/zoneinfo(/|$)|^/etc/timezone$")
_LOADER = re.compile(r"^/etc/ld\.so\.(cache|preload)$|\.so(\.[\d.]+)?$|/glibc-hwcaps(/|$)|"
                     r"^(/usr)?/lib(32|64|x32)?(/[\w.-]+-linux-gnu)?(/(tls|haswell|x86_64|avx512_1|i686))*/?$|"
                     # ld.so probing an RPATH: <libdir>/tls/haswell/avx512_1/x86_64, every prefix of
                     # it, and the platform directory twice (<libdir>/x86_64/x86_64, pyenv's python)
                     r"/lib\w*(/(tls|haswell|avx512_1|x86_64))+$")
_SYSINFO = re.compile(r"^/proc/sys/kernel/|^/sys/devices/system/cpu/|^/proc/(meminfo|stat|loadavg|cpuinfo)$|"
                      r"^/proc/self/(maps|fd/\d+|stat|status|mountinfo)$|^/proc/\d+/(maps|stat|status)$|"
                      r"^/dev/(tty|pts/\d+|ptmx)$|^/sys/fs/cgroup/")


def cause_of_path(path: str | None) -> str | None:
    """A libc-internal cause recognised from the file alone, or None."""
    if not path:
        return None
    for cause, pattern in (("nss", _NSS), ("timezone", _TIMEZONE), ("locale", _LOCALE),
                           ("loader", _LOADER), ("sysinfo", _SYSINFO)):
        if pattern.search(path):
            return cause
    return None
