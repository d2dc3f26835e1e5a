/* An independent oracle for nodewatch's GPU ioctl probe, from user space.
 *
 * Preloaded into a program (LD_PRELOAD=./ioctl_oracle.so), it wraps libc's ioctl(): for
 * every call on a character device it records the device (major:minor of the fd) and the
 * call's duration into power-of-two nanosecond buckets, and at exit appends one line per
 * device and bucket to the file named by IOCTL_ORACLE_OUT:
 *     <major>:<minor> <bucket> <count>
 * where bucket b holds durations in (2^(b-1), 2^b] ns (b = 0 holds 0 and 1 ns), and a line
 *     <major>:<minor> max_ns <longest call>
 * and one line per device and command type (`_IOC_TYPE(req)`, bits 8-15) it saw:
 *     <major>:<minor> type_<hex> <count>
 * Calls made with syscall(SYS_ioctl, ...) directly bypass it: a lower count than the
 * kernel-side probe's says the program does that.
 * Build: cc -O2 -shared -fPIC -o ioctl_oracle.so ioctl_oracle.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 64
#define BUCKETS 40

struct slot {
    _Atomic unsigned long rdev; /* 0 = free; stores rdev + 1 */
    _Atomic unsigned long count[BUCKETS];
    _Atomic unsigned long max_ns;
    _Atomic unsigned long types[256];
};
static struct slot slots[SLOTS];
static int (*real_ioctl)(int, unsigned long, void *);

static struct slot *slot_for(dev_t rdev) {
    unsigned long key = (unsigned long)rdev + 1;
    for (int i = 0; i < SLOTS; i++) {
        unsigned long cur = atomic_load(&slots[i].rdev);
        if (cur == key) return &slots[i];
        if (cur == 0) {
            unsigned long zero = 0;
            if (atomic_compare_exchange_strong(&slots[i].rdev, &zero, key)) return &slots[i];
            if (zero == key) return &slots[i];
        }
    }
    return NULL;
}

static int bucket(unsigned long ns) {
    int b = 0;
    while (b < BUCKETS - 1 && (1UL << b) < ns) b++;
    return b;
}

int ioctl(int fd, unsigned long req, ...) {
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real_ioctl) real_ioctl = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
    struct stat st;
    int chr = fstat(fd, &st) == 0 && S_ISCHR(st.st_mode);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int rc = real_ioctl(fd, req, arg);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (chr) {
        unsigned long ns = (b.tv_sec - a.tv_sec) * 1000000000UL + (b.tv_nsec - a.tv_nsec);
        struct slot *s = slot_for(st.st_rdev);
        if (s) {
            atomic_fetch_add(&s->count[bucket(ns)], 1);
            atomic_fetch_add(&s->types[(req >> 8) & 0xff], 1);
            unsigned long m = atomic_load(&s->max_ns);
            while (ns > m && !atomic_compare_exchange_weak(&s->max_ns, &m, ns)) {}
        }
    }
    return rc;
}

__attribute__((destructor)) static void dump(void) {
    const char *path = getenv("IOCTL_ORACLE_OUT");
    if (!path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    for (int i = 0; i < SLOTS; i++) {
        unsigned long key = atomic_load(&slots[i].rdev);
        if (!key) continue;
        dev_t rdev = (dev_t)(key - 1);
        for (int b = 0; b < BUCKETS; b++) {
            unsigned long c = atomic_load(&slots[i].count[b]);
            if (c) fprintf(f, "%u:%u %d %lu\n", major(rdev), minor(rdev), b, c);
        }
        fprintf(f, "%u:%u max_ns %lu\n", major(rdev), minor(rdev), atomic_load(&slots[i].max_ns));
        for (int t = 0; t < 256; t++) {
            unsigned long c = atomic_load(&slots[i].types[t]);
            if (c) fprintf(f, "%u:%u type_%02x %lu\n", major(rdev), minor(rdev), t, c);
        }
    }
    fclose(f);
}
