/* Read-only mappings of capture files, guarded against the file shrinking under them.
 *
 * Reading a capture file through a mapping of the page cache spares the copy `read` makes
 * (capture/read/mapped.py), but a page of a file mapping that lies past the file's end (the
 * file was truncated after it was mapped) raises SIGBUS when touched, and SIGBUS kills the
 * process. lbm_map() maps a file range and records it with the caller's tag; the SIGBUS handler
 * (installed, or put back on top, by every lbm_map) replaces a recorded mapping's pages from the
 * faulting one to its end with zero-filled anonymous pages, notes the tag, and returns: the
 * access that faulted, and every later one there, reads zeros. The reader asks
 * lbm_map_shrunk(tag) after each chunk and once more at the end, and fails the file.
 *
 * A SIGBUS outside the recorded mappings is not ours: the handler that was installed before
 * is called once (Python's faulthandler prints its traceback), the default action is put back,
 * and the fault happens again and ends the process as it would have without this guard.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "_fastwalk.h"

#ifdef MADV_POPULATE_READ
#define LBM_MADV_POPULATE_READ MADV_POPULATE_READ
#else
#define LBM_MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif
#define MAP_SLOTS 256   /* mappings recorded at once (a reader holds a few) */
#define SHRUNK_TAGS 64  /* the tags whose mappings faulted, the latest ones */

struct guarded {
    _Atomic uintptr_t start; /* 0: a free slot; 1: being claimed or freed */
    _Atomic uintptr_t end;
    _Atomic int64_t tag;
};

static struct guarded slots[MAP_SLOTS];
static _Atomic int64_t shrunk[SHRUNK_TAGS];
static _Atomic unsigned shrunk_next;
static _Atomic int chained;
static struct sigaction prev;
static uintptr_t page_mask; /* set before the handler is installed: sysconf is not for handlers */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    uintptr_t a = (uintptr_t)si->si_addr;
    if (si->si_code > 0) { /* raised by the kernel for an access, not sent by a process */
        for (int i = 0; i < MAP_SLOTS; i++) {
            uintptr_t start = atomic_load(&slots[i].start), end = atomic_load(&slots[i].end);
            if (start <= 1 || a < start || a >= end) /* 0: free; 1: being claimed */
                continue;
            uintptr_t page = a & page_mask;
            void *r = mmap((void *)page, end - page, PROT_READ,
                           MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (r == MAP_FAILED)
                break; /* cannot mend it: fall through to the default action */
            unsigned k = atomic_fetch_add(&shrunk_next, 1) % SHRUNK_TAGS;
            atomic_store(&shrunk[k], atomic_load(&slots[i].tag));
            return;
        }
    }
    if (!atomic_exchange(&chained, 1)) {
        if (prev.sa_flags & SA_SIGINFO) {
            if (prev.sa_sigaction != NULL && prev.sa_sigaction != on_sigbus)
                prev.sa_sigaction(sig, si, ctx);
        } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
            prev.sa_handler(sig);
        }
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
}

static int is_ours(const struct sigaction *sa) {
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_sigbus;
}

int lbm_map_guard(void) {
    struct sigaction cur, sa, old;
    int ok = -1;
    pthread_mutex_lock(&install_lock);
    if (sigaction(SIGBUS, NULL, &cur) == 0 && is_ours(&cur)) {
        ok = 0;
    } else {
        page_mask = ~((uintptr_t)sysconf(_SC_PAGESIZE) - 1);
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, &old) == 0) {
            prev = old;
            atomic_store(&chained, 0);
            /* a sanitizer runtime may keep the handler for itself: then no guard */
            if (sigaction(SIGBUS, NULL, &cur) == 0 && is_ours(&cur))
                ok = 0;
        }
    }
    pthread_mutex_unlock(&install_lock);
    return ok;
}

void *lbm_map(int fd, int64_t offset, int64_t length, int64_t tag) {
    if (length <= 0 || offset < 0) {
        errno = EINVAL;
        return NULL;
    }
    if (lbm_map_guard() != 0) {
        errno = ENOTSUP;
        return NULL;
    }
    void *p = mmap(NULL, (size_t)length, PROT_READ, MAP_SHARED, fd, (off_t)offset);
    if (p == MAP_FAILED)
        return NULL;
    /* every page table entry at once rather than 16 pages a fault as the walk goes (fewer
     * faults: 29k against 38k a 2M-packet replay); older kernels refuse it and fault instead */
    (void)madvise(p, (size_t)length, LBM_MADV_POPULATE_READ);
    for (int i = 0; i < MAP_SLOTS; i++) {
        uintptr_t none = 0;
        /* claimed with a placeholder start (1 is never a mapping) until end and tag are set */
        if (atomic_compare_exchange_strong(&slots[i].start, &none, (uintptr_t)1)) {
            atomic_store(&slots[i].end, (uintptr_t)p + (uintptr_t)length);
            atomic_store(&slots[i].tag, tag);
            atomic_store(&slots[i].start, (uintptr_t)p);
            return p;
        }
    }
    munmap(p, (size_t)length);
    errno = ENOMEM;
    return NULL;
}

int lbm_unmap(void *addr, int64_t length) {
    for (int i = 0; i < MAP_SLOTS; i++) {
        if (atomic_load(&slots[i].start) == (uintptr_t)addr) {
            atomic_store(&slots[i].start, (uintptr_t)1); /* not looked up from here on */
            atomic_store(&slots[i].end, (uintptr_t)0);
            atomic_store(&slots[i].start, (uintptr_t)0);
            break;
        }
    }
    return munmap(addr, (size_t)length);
}

int lbm_map_shrunk(int64_t tag) {
    for (int k = 0; k < SHRUNK_TAGS; k++)
        if (atomic_load(&shrunk[k]) == tag)
            return 1;
    return 0;
}
