"""fsx-style soak: random reads, writes, truncates, allocations, mappings and vectored I/O
through two descriptors of one file, from a seed.  Prints the final size, a hash of the file
and a hash of everything every operation returned: a run on /job must print what a run on a
local file prints.

    python3 fsx.py PATH SEED OPERATIONS
"""
import hashlib, mmap, os, random, sys
path, seed, nops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
MAX = 256 * 1024
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
fd2 = os.open(path, os.O_RDWR)
log = hashlib.sha256()
def note(*v):
    log.update(repr(v).encode())
for i in range(nops):
    op = rnd.randrange(12)
    off = rnd.randrange(MAX)
    n = rnd.randrange(1, 65536) if rnd.random() < 0.2 else rnd.randrange(1, 4096)
    f = fd if rnd.random() < 0.7 else fd2
    size = os.fstat(fd).st_size
    if op == 0:
        os.lseek(f, off, 0); note(i, os.read(f, n))
    elif op == 1:
        note(i, os.pread(f, n, off))
    elif op == 2:
        os.lseek(f, off, 0); note(i, os.write(f, rnd.randbytes(n)))
    elif op == 3:
        note(i, os.pwrite(f, rnd.randbytes(n), off))
    elif op == 4:
        os.ftruncate(f, rnd.randrange(MAX)); note(i, os.fstat(f).st_size)
    elif op == 5:
        os.posix_fallocate(f, off, n); note(i, os.fstat(f).st_size)
    elif op == 6:
        note(i, os.read(f, n))                      # sequential: read-ahead
    elif op == 7:
        note(i, os.write(f, rnd.randbytes(n)))      # at the current offset
    elif op == 8 and size > 0:
        m = mmap.mmap(f, size, mmap.MAP_SHARED)
        a = rnd.randrange(size); b = min(size, a + n)
        m[a:b] = rnd.randbytes(b - a)
        if rnd.random() < 0.5:
            m.flush()
        m.close(); note(i, a, b)
    elif op == 9 and size > 0:
        m = mmap.mmap(f, size, mmap.MAP_SHARED, mmap.PROT_READ)
        a = rnd.randrange(size); note(i, m[a:a + n]); m.close()
    elif op == 10:
        note(i, os.lseek(f, rnd.randrange(-100, 100), os.SEEK_CUR) if os.lseek(f, 0, 1) >= 100 else os.lseek(f, 0, 2))
    elif op == 11:
        b = [bytearray(rnd.randrange(1, 2000)) for _ in range(3)]
        if rnd.random() < 0.5:
            note(i, os.preadv(f, b, off), [bytes(x) for x in b])
        else:
            note(i, os.pwritev(f, [rnd.randbytes(len(x)) for x in b], off))
with open(path, "rb") as fh:
    data = fh.read()
print(os.fstat(fd).st_size, hashlib.sha256(data).hexdigest(), log.hexdigest())
