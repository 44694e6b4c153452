/*
 * mounts.c - the sandbox's mount list: parsing, lookup, forward and reverse
 * translation, private directories.
 *
 * Grammar (one entry per line, fields separated by blanks):
 *
 *     prefix  redirect  [mode]
 *     prefix  mode
 *
 *   prefix    an absolute path; it matches itself and everything below it
 *             (on component boundaries: /tmp matches /tmp/a, not /tmpfoo)
 *   redirect  an absolute path, DENY (EACCES), ENOENT (absent) or PRIVATE
 *             (a fresh directory for this run)
 *   mode      letters from "rwx" ("-" alone: no access); default rwx
 *
 * '#' starts a comment when it begins a field.  For a path, the entry with
 * the longest matching prefix governs; for equal prefixes the later line
 * wins.  Implicit entries come first: "/ rwx", and "rw" for /dev/null,
 * /dev/zero, /dev/full, /dev/random, /dev/urandom, /dev/tty and /dev/shm.
 *
 * This is the only parser of the grammar: mounts.py beside it calls it (built
 * as a small library, through cffi) so that `bypass run -m` reports a bad list
 * before anything runs, in the words the agent would use.
 */
#define _GNU_SOURCE
#include "sandbox.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void set_err(char *err, size_t errsize, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void set_err(char *err, size_t errsize, const char *file, int line, const char *fmt, ...)
{
    if (!err || errsize == 0)
        return;
    int n = snprintf(err, errsize, "%s:%d: error: ", file, line);
    if (n < 0 || (size_t)n >= errsize)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errsize - (size_t)n, fmt, ap);
    va_end(ap);
}

void sb_copy(char *out, size_t outsize, const char *src)
{
    if (!outsize)
        return;
    size_t n = strlen(src);
    if (n >= outsize)
        n = outsize - 1;
    memmove(out, src, n);
    out[n] = '\0';
}

int sb_normalise(const char *in, char *out, size_t outsize)
{
    if (!in || in[0] != '/')
        return EINVAL;
    if (outsize < 2)
        return ENAMETOOLONG;
    size_t o = 0;
    const char *p = in;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *s = p;
        while (*p && *p != '/')
            p++;
        size_t len = (size_t)(p - s);
        if (len == 1 && s[0] == '.')
            continue;
        if (len == 2 && s[0] == '.' && s[1] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--;            /* drop the slash too */
            continue;
        }
        if (o + 1 + len + 1 > outsize)
            return ENAMETOOLONG;
        out[o++] = '/';
        memcpy(out + o, s, len);
        o += len;
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return 0;
}

/* Modes and keywords are read as Parrot reads them: in either case ("RX", "deny"). */
static int is_mode(const char *t)
{
    if (!*t)
        return 0;
    if (strcmp(t, "-") == 0)
        return 1;
    for (const char *c = t; *c; c++)
        if (!strchr("rwxRWX", *c))
            return 0;
    return 1;
}

static int mode_bits(const char *t)
{
    int m = 0;
    for (const char *c = t; *c; c++) {
        int l = *c | 0x20;              /* ASCII lower case: tolower reads a page of the C library's tables */
        if (l == 'r') m |= SB_R;
        else if (l == 'w') m |= SB_W;
        else if (l == 'x') m |= SB_X;
    }
    return m;
}

/* word equals the upper-case keyword, in either case (by hand, not strcasecmp: every process
 * of a run parses the list at start, and that is one more page of the C library for each) */
static int is_keyword(const char *word, const char *keyword)
{
    for (; *keyword; word++, keyword++) {
        char c = *word >= 'a' && *word <= 'z' ? (char)(*word - 'a' + 'A') : *word;
        if (c != *keyword)
            return 0;
    }
    return *word == '\0';
}

static int is_glob(const char *p)
{
    /* by hand: strpbrk's page of the C library is one more fault in every process of a run */
    for (; *p; p++)
        if (*p == '*' || *p == '?' || *p == '[')
            return 1;
    return 0;
}

static size_t components(const char *p)
{
    size_t n = 0;
    for (; *p; p++)
        if (*p == '/' && p[1] && p[1] != '/')
            n++;
    return n;
}

size_t sb_entry_covers(const struct sb_entry *e, const char *vpath)
{
    if (!e->glob) {
        if (e->plen == 1)
            return 1;
        return strncmp(vpath, e->prefix, e->plen) == 0 &&
                       (vpath[e->plen] == '/' || vpath[e->plen] == '\0')
                   ? e->plen
                   : 0;
    }
    /* the first k components of vpath against the pattern's k */
    size_t k = components(e->prefix), seen = 0;
    const char *p = vpath;
    while (*p) {
        if (*p == '/' && ++seen > k)
            break;
        p++;
    }
    if (seen < k)
        return 0;
    size_t l = (size_t)(p - vpath);
    char head[PATH_MAX];
    if (l + 1 > sizeof head)
        return 0;
    memcpy(head, vpath, l);
    head[l] = '\0';
    return fnmatch(e->prefix, head, FNM_PATHNAME) == 0 ? l : 0;
}

static int same_effect(const struct sb_entry *a, const struct sb_entry *b)
{
    if (a->kind != b->kind || a->mode != b->mode)
        return 0;
    if (a->kind == SB_REDIRECT)
        return strcmp(a->target, b->target) == 0;
    return a->kind != SB_PRIVATE;
}

int sb_mounts_parrot_differs(const struct sb_mounts *m, char *out, size_t outsize)
{
    int n = 0;
    size_t o = 0;
    if (outsize)
        out[0] = '\0';
    for (int i = 0; i < m->n; i++) {
        const struct sb_entry *inner = &m->e[i];
        for (int j = i + 1; j < m->n; j++) {
            const struct sb_entry *outer = &m->e[j];
            /* a later line covering an earlier, longer prefix with another effect */
            if (inner->line == 0 || outer->plen >= inner->plen || outer->glob || inner->glob ||
                !sb_entry_covers(outer, inner->prefix) || same_effect(inner, outer))
                continue;
            n++;
            int k = snprintf(out + o, outsize > o ? outsize - o : 0, "%sline %d (%s) over line %d (%s)",
                             o ? ", " : "", inner->line, inner->prefix, outer->line, outer->prefix);
            if (k > 0 && o + (size_t)k < outsize)
                o += (size_t)k;
        }
    }
    return n;
}

static int add_entry(struct sb_mounts *m, int *cap, const struct sb_entry *e)
{
    if (m->n == *cap) {
        int nc = *cap ? *cap * 2 : 16;
        struct sb_entry *ne = realloc(m->e, (size_t)nc * sizeof *ne);
        if (!ne)
            return -1;
        m->e = ne;
        *cap = nc;
    }
    m->e[m->n++] = *e;
    return 0;
}

void sb_mounts_free(struct sb_mounts *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n; i++) {
        if (m->e[i].target != m->e[i].prefix)
            free(m->e[i].target);
        free(m->e[i].prefix);
    }
    free(m->e);
    m->e = NULL;
    m->n = 0;
    free(m->file);
    m->file = NULL;
}

/* Canonical form of a redirect target: the real path if it exists (so that
 * reverse translation of kernel answers such as getcwd matches), else the
 * lexically normalised path. */
static char *canonical_target(const char *norm)
{
    char buf[PATH_MAX];
    if (realpath(norm, buf))
        return strdup(buf);
    return strdup(norm);
}

#define MAX_FIELDS 4

int sb_mounts_parse(struct sb_mounts *m, const char *text, const char *file,
                    char *err, size_t errsize)
{
    memset(m, 0, sizeof *m);
    m->file = strdup(file ? file : "<mounts>");
    if (!m->file) {
        set_err(err, errsize, file ? file : "<mounts>", 0, "out of memory");
        return -1;
    }
    file = m->file;
    int cap = 0;
    struct sb_entry root = { strdup("/"), 1, NULL, 1, SB_IDENTITY, SB_R | SB_W | SB_X, 0, 0 };
    if (!root.prefix || add_entry(m, &cap, &root) < 0) {
        set_err(err, errsize, file, 0, "out of memory");
        return -1;
    }
    m->e[0].target = m->e[0].prefix;
    /* Devices every program expects to use, and /dev/shm, where the C library makes POSIX
     * semaphores and shared memory (Python's multiprocessing) out of the agent's sight but not
     * of Landlock's; a later line can still say otherwise ("/dev/null DENY"). */
    static const char *const devices[] = {
        "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/shm",
    };
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
        struct sb_entry d = { strdup(devices[i]), strlen(devices[i]), NULL, 0, SB_IDENTITY,
                              SB_R | SB_W, 0, 0 };
        d.target = d.prefix;
        d.tlen = d.plen;
        if (!d.prefix || add_entry(m, &cap, &d) < 0) {
            free(d.prefix);
            set_err(err, errsize, file, 0, "out of memory");
            goto fail;
        }
    }

    int lineno = 0;
    const char *p = text;
    while (*p) {
        lineno++;
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len >= PATH_MAX * 2 + 64) {
            set_err(err, errsize, file, lineno, "line too long");
            goto fail;
        }
        char line[len + 1];             /* as long as the line: each page of stack is a fault */
        memcpy(line, p, len);
        line[len] = '\0';
        p = eol ? eol + 1 : p + len;

        char *f[MAX_FIELDS + 1];
        int nf = 0;
        char *s = line;
        for (;;) {
            while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\v' || *s == '\f')
                s++;
            if (!*s || *s == '#')
                break;
            if (nf == MAX_FIELDS) {
                nf++;
                break;
            }
            f[nf++] = s;
            while (*s && *s != ' ' && *s != '\t' && *s != '\r' && *s != '\v' && *s != '\f')
                s++;
            if (*s)
                *s++ = '\0';
        }
        if (nf == 0)
            continue;
        if (nf > 3) {
            set_err(err, errsize, file, lineno,
                    "too many fields (expected: prefix redirect [mode], or prefix mode)");
            goto fail;
        }
        if (f[0][0] != '/') {
            set_err(err, errsize, file, lineno,
                    "relative prefix '%s' (prefixes must be absolute paths)", f[0]);
            goto fail;
        }
        if (nf == 1) {
            set_err(err, errsize, file, lineno,
                    "missing redirect or mode after prefix '%s'", f[0]);
            goto fail;
        }
        struct sb_entry e = { 0 };
        e.line = lineno;
        e.mode = SB_R | SB_W | SB_X;
        /* normalising never lengthens a path: the field's length is room enough */
        size_t room = strlen(f[0]) + 2 < PATH_MAX ? strlen(f[0]) + 2 : PATH_MAX;
        char norm[room];
        if (sb_normalise(f[0], norm, sizeof norm)) {
            set_err(err, errsize, file, lineno, "prefix too long");
            goto fail;
        }
        const char *what = f[1];
        size_t troom = strlen(what) + 2 < PATH_MAX ? strlen(what) + 2 : PATH_MAX;
        char tnorm[troom];
        if (what[0] == '/') {
            e.kind = SB_REDIRECT;
            if (sb_normalise(what, tnorm, sizeof tnorm)) {
                set_err(err, errsize, file, lineno, "redirect path too long");
                goto fail;
            }
        } else if (is_keyword(what, "DENY")) {
            e.kind = SB_DENY;
            e.mode = 0;
        } else if (is_keyword(what, "ENOENT")) {
            e.kind = SB_ENOENT;
            e.mode = 0;
        } else if (is_keyword(what, "PRIVATE")) {
            e.kind = SB_PRIVATE;
        } else if (is_mode(what)) {
            e.kind = SB_IDENTITY;
            e.mode = mode_bits(what);
            if (nf == 3) {
                set_err(err, errsize, file, lineno,
                        "unexpected '%s' after mode '%s'", f[2], what);
                goto fail;
            }
        } else if (strchr(what, '/') || what[0] == '.' || what[0] == '~') {
            set_err(err, errsize, file, lineno,
                    "relative redirect '%s' (redirects must be absolute paths)", what);
            goto fail;
        } else {
            set_err(err, errsize, file, lineno,
                    "unknown keyword '%s' (expected an absolute path, DENY, ENOENT, "
                    "PRIVATE or a mode from rwx)", what);
            goto fail;
        }
        if (nf == 3) {
            if (e.kind == SB_DENY || e.kind == SB_ENOENT) {
                set_err(err, errsize, file, lineno, "%s takes no mode (got '%s')", what, f[2]);
                goto fail;
            }
            if (!is_mode(f[2])) {
                set_err(err, errsize, file, lineno,
                        "bad mode '%s' (use letters from rwx, or '-')", f[2]);
                goto fail;
            }
            e.mode = mode_bits(f[2]);
        }
        e.glob = is_glob(norm);
        if (e.glob && e.kind != SB_DENY && e.kind != SB_ENOENT && e.kind != SB_IDENTITY) {
            set_err(err, errsize, file, lineno,
                    "glob prefix '%s' can only DENY, hide (ENOENT) or set a mode", norm);
            goto fail;
        }
        e.prefix = strdup(norm);
        if (!e.prefix) {
            set_err(err, errsize, file, lineno, "out of memory");
            goto fail;
        }
        e.plen = strlen(e.prefix);
        if (e.kind == SB_IDENTITY) {
            e.target = e.prefix;
        } else if (e.kind == SB_REDIRECT) {
            e.target = canonical_target(tnorm);
            if (!e.target) {
                free(e.prefix);
                set_err(err, errsize, file, lineno, "out of memory");
                goto fail;
            }
        }
        e.tlen = e.target ? strlen(e.target) : 0;
        if (add_entry(m, &cap, &e) < 0) {
            if (e.target != e.prefix)
                free(e.target);
            free(e.prefix);
            set_err(err, errsize, file, lineno, "out of memory");
            goto fail;
        }
    }
    return 0;
fail:
    sb_mounts_free(m);
    return -1;
}

char *sb_mounts_read(const char *file, char *err, size_t errsize)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errsize, file, 0, "cannot read mount list: %s", strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            close(fd);
            set_err(err, errsize, file, 0, "out of memory");
            return NULL;
        }
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                continue;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t k = read(fd, buf + len, cap - len - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            free(buf);
            close(fd);
            set_err(err, errsize, file, 0, "cannot read mount list: %s", strerror(e));
            return NULL;
        }
        if (k == 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = '\0';
    if (memchr(buf, '\0', len)) {
        free(buf);
        set_err(err, errsize, file, 0, "cannot read mount list: binary data (NUL byte)");
        return NULL;
    }
    return buf;
}

int sb_mounts_load(struct sb_mounts *m, const char *file, char *err, size_t errsize)
{
    memset(m, 0, sizeof *m);
    char *buf = sb_mounts_read(file, err, errsize);
    if (!buf)
        return -1;
    int rc = sb_mounts_parse(m, buf, file, err, errsize);
    free(buf);
    return rc;
}

static inline int prefix_match(const char *prefix, size_t plen, const char *path)
{
    if (plen == 1)                      /* "/" */
        return 1;
    return strncmp(path, prefix, plen) == 0 && (path[plen] == '/' || path[plen] == '\0');
}

const struct sb_entry *sb_lookup(const struct sb_mounts *m, const char *vpath)
{
    const struct sb_entry *best = NULL;
    size_t bl = 0;
    for (int i = 0; i < m->n; i++) {
        const struct sb_entry *e = &m->e[i];
        if (e->glob) {
            size_t l = sb_entry_covers(e, vpath);
            if (l && l >= bl) {
                best = e;
                bl = l;
            }
        } else if ((!best || e->plen >= bl) && prefix_match(e->prefix, e->plen, vpath)) {
            best = e;
            bl = e->plen;
        }
    }
    return best;
}

/* out = base + rest, where rest is "" or starts with '/'. */
static int join(const char *base, size_t blen, const char *rest, char *out, size_t outsize)
{
    size_t rlen = strlen(rest);
    if (blen == 1 && base[0] == '/') {
        if (rlen == 0) {
            if (outsize < 2)
                return ENAMETOOLONG;
            out[0] = '/';
            out[1] = '\0';
            return 0;
        }
        blen = 0;
    }
    if (blen + rlen + 1 > outsize)
        return ENAMETOOLONG;
    memmove(out + blen, rest, rlen + 1);   /* rest may alias out */
    memcpy(out, base, blen);
    return 0;
}

int sb_translate(const struct sb_entry *e, const char *vpath, char *out, size_t outsize)
{
    if (e->kind == SB_IDENTITY || !e->target) {
        size_t l = strlen(vpath);
        if (l + 1 > outsize)
            return ENAMETOOLONG;
        if (out != vpath)
            memmove(out, vpath, l + 1);
        return 0;
    }
    const char *rest = e->plen == 1 ? (vpath[1] ? vpath : "") : vpath + e->plen;
    if (strlen(rest) + 1 > PATH_MAX)
        return ENAMETOOLONG;
    return join(e->target, e->tlen, rest, out, outsize);       /* join copies an aliased rest first */
}

int sb_prefix_real(const struct sb_mounts *m, const struct sb_entry *e, char *out, size_t outsize)
{
    const struct sb_entry *up = NULL;
    for (int j = 0; j < m->n; j++) {
        const struct sb_entry *o = &m->e[j];
        if (o->plen < e->plen && o->target && o->kind != SB_IDENTITY && !o->glob &&
            prefix_match(o->prefix, o->plen, e->prefix) && (!up || o->plen >= up->plen))
            up = o;
    }
    if (up && !e->glob)
        return sb_translate(up, e->prefix, out, outsize);
    if (e->plen + 1 > outsize)
        return ENAMETOOLONG;
    memcpy(out, e->prefix, e->plen + 1);
    return 0;
}

/* Does the virtual path e gives real lead back to e, or is it hidden behind a more specific
 * entry?  Apart, with its buffer: sb_reverse runs deep in a first relative call (the cwd asked
 * of the kernel), and most real paths lie below no mapped place, where it has nothing to join. */
static __attribute__((noinline)) int reverses_to(const struct sb_mounts *m, const struct sb_entry *e,
                                                const char *real)
{
    char cand[PATH_MAX];
    const char *rest = e->tlen == 1 ? (real[1] ? real : "") : real + e->tlen;
    return join(e->prefix, e->plen, rest, cand, sizeof cand) == 0 && sb_lookup(m, cand) == e;
}

int sb_reverse(const struct sb_mounts *m, const char *real, char *out, size_t outsize)
{
    const struct sb_entry *best = NULL;
    for (int i = 0; i < m->n; i++) {
        const struct sb_entry *e = &m->e[i];
        if (!e->target || e->kind == SB_DENY || e->kind == SB_ENOENT || e->glob)
            continue;
        if (best && e->tlen < best->tlen)
            continue;
        if (!prefix_match(e->target, e->tlen, real))
            continue;
        int same = e->tlen == e->plen && memcmp(e->target, e->prefix, e->plen) == 0;
        if (same ? sb_lookup(m, real) != e : !reverses_to(m, e, real))
            continue;
        best = e;
    }
    if (!best) {
        size_t l = strlen(real);
        if (l + 1 > outsize)
            return 0;
        memmove(out, real, l + 1);
        return 0;
    }
    const char *rest = best->tlen == 1 ? (real[1] ? real : "") : real + best->tlen;
    if (join(best->prefix, best->plen, rest, out, outsize))     /* real may be out: join moves it */
        return 0;
    return 1;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    size_t l = strlen(path);
    if (l + 1 > sizeof buf)
        return ENAMETOOLONG;
    memcpy(buf, path, l + 1);
    for (char *c = buf + 1; ; c++) {
        if (*c == '/' || *c == '\0') {
            char save = *c;
            *c = '\0';
            if (mkdir(buf, mode) == 0)
                chmod(buf, mode);       /* whatever the umask */
            else if (errno != EEXIST)
                return errno;
            *c = save;
            if (!save)
                break;
        }
    }
    return 0;
}

int sb_private_attach(struct sb_mounts *m, const char *dir, char *err, size_t errsize)
{
    char base[PATH_MAX];
    if (!realpath(dir, base)) {
        set_err(err, errsize, m->file, 0, "private directory %s: %s", dir, strerror(errno));
        return -1;
    }
    return sb_private_attach_canonical(m, base, 1, err, errsize);
}

/* The private directory standing for `place`: its permission bits (a private /tmp is 1777, as
 * /tmp is, so that a child that changes its uid can use it as it would the real one; 0700 when
 * the place does not exist), made on the way 0711 (passable, not listable).  0 or errno. */
static int private_mkdir(const char *t, const char *place)
{
    struct stat st;
    mode_t mode = stat(place, &st) == 0 && S_ISDIR(st.st_mode) ? (st.st_mode & 07777) : 0700;
    int rc = mkdir(t, 0700) == 0 ? 0 : errno;
    if (rc == ENOENT) {
        char parent[PATH_MAX];
        snprintf(parent, sizeof parent, "%s", t);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = '\0';
            rc = mkdir_p(parent, 0711);
            if (!rc)
                rc = mkdir(t, 0700) == 0 ? 0 : errno;
        }
    }
    if (rc == EEXIST && stat(t, &st) == 0 && S_ISDIR(st.st_mode))
        rc = 0;                         /* made on the way to a longer PRIVATE line */
    if (!rc && chmod(t, mode) < 0)      /* the bits exactly, whatever the umask */
        rc = errno;
    return rc;
}

int sb_private_attach_canonical(struct sb_mounts *m, const char *base, int make, char *err,
                                size_t errsize)
{
    for (int i = 0; i < m->n; i++) {
        struct sb_entry *e = &m->e[i];
        if (e->kind != SB_PRIVATE)
            continue;
        /* as long as the path: every process of a run comes here, and stack pages are faults */
        size_t room = strlen(base) + e->plen + 2 < PATH_MAX ? strlen(base) + e->plen + 2 : PATH_MAX;
        char t[room];
        if (join(base, strlen(base), e->plen == 1 ? "" : e->prefix, t, sizeof t)) {
            set_err(err, errsize, m->file, e->line, "private directory path too long");
            return -1;
        }
        int rc = make ? private_mkdir(t, e->prefix) : 0;
        if (rc) {
            set_err(err, errsize, m->file, e->line, "cannot make private directory %s: %s",
                    t, strerror(rc));
            return -1;
        }
        free(e->target);
        e->target = strdup(t);
        e->tlen = e->target ? strlen(e->target) : 0;
        if (!e->target) {
            set_err(err, errsize, m->file, e->line, "out of memory");
            return -1;
        }
    }
    return 0;
}
