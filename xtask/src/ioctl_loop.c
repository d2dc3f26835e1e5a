/* Cost of one ioctl, for `cargo xtask bench`: times CALLS ioctl(TCGETS) on FILE (a char
 * device such as /dev/null answers -ENOTTY at once, so the figure is the syscall path and
 * whatever is attached to it), then CALLS getppid() as a syscall nobody traces. Prints one
 * line per round: "<ns per ioctl> <ns per getppid>".
 *
 * With --empty-programs it first attaches a two-instruction program (return 0: drop the
 * record) to syscalls:sys_enter_ioctl and sys_exit_ioctl, the way nodewatch attaches its
 * own: the floor that any eBPF tool on these tracepoints pays. At the end it prints
 * "bpf <run_time_ns> <run_cnt>" of those programs (non-zero with kernel.bpf_stats_enabled).
 *
 * With --paced FILE RATE SECONDS it makes RATE ioctls per second for SECONDS instead (a batch
 * every millisecond), and prints the calls made: load for the footprint benchmark. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static int progs[2], nprogs;

static int attach_empty(const char *event)
{
    struct bpf_insn insns[2];
    memset(insns, 0, sizeof insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K; /* r0 = 0 */
    insns[1].code = BPF_JMP | BPF_EXIT;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_TRACEPOINT;
    a.insns = (unsigned long)insns;
    a.insn_cnt = 2;
    a.license = (unsigned long)"GPL";
    int prog = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    if (prog < 0) {
        perror("BPF_PROG_LOAD");
        return -1;
    }
    progs[nprogs++] = prog;
    char path[256], id[32] = {0};
    snprintf(path, sizeof path, "/sys/kernel/tracing/events/syscalls/%s/id", event);
    int f = open(path, O_RDONLY);
    if (f < 0 || read(f, id, sizeof id - 1) <= 0) {
        perror(path);
        return -1;
    }
    close(f);
    struct perf_event_attr pa;
    memset(&pa, 0, sizeof pa);
    pa.type = PERF_TYPE_TRACEPOINT;
    pa.size = sizeof pa;
    pa.config = strtoull(id, NULL, 10);
    pa.sample_period = 1;
    pa.wakeup_events = 1;
    int pfd = syscall(SYS_perf_event_open, &pa, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
    if (pfd < 0 || ioctl(pfd, PERF_EVENT_IOC_SET_BPF, prog) < 0 ||
        ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0) < 0) {
        perror("attach to the tracepoint");
        return -1;
    }
    return 0;
}

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int paced(const char *file, long rate, double seconds)
{
    int fd = open(file, O_RDWR);
    if (fd < 0) {
        perror(file);
        return 1;
    }
    struct termios t;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    double start = now_ns();
    long made = 0;
    for (long tick = 1; now_ns() - start < seconds * 1e9; tick++) {
        long due = (long)(rate * (double)tick / 1000.0);
        for (; made < due; made++)
            ioctl(fd, TCGETS, &t);
        next.tv_nsec += 1000000;
        if (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    printf("%ld %.3f\n", made, (now_ns() - start) / 1e9);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--paced") == 0)
        return paced(argv[2], atol(argv[3]), atof(argv[4]));
    if (argc != 4 && !(argc == 5 && strcmp(argv[4], "--empty-programs") == 0)) {
        fprintf(stderr, "usage: %s FILE CALLS ROUNDS [--empty-programs]\n", argv[0]);
        return 2;
    }
    if (argc == 5 && (attach_empty("sys_enter_ioctl") || attach_empty("sys_exit_ioctl")))
        return 1;
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    long calls = atol(argv[2]);
    int rounds = atoi(argv[3]);
    struct termios t;
    for (long i = 0; i < calls / 10; i++)
        ioctl(fd, TCGETS, &t);
    for (int r = 0; r < rounds; r++) {
        double a = now_ns();
        for (long i = 0; i < calls; i++)
            ioctl(fd, TCGETS, &t);
        double b = now_ns();
        for (long i = 0; i < calls; i++)
            syscall(SYS_getppid);
        double c = now_ns();
        printf("%.1f %.1f\n", (b - a) / calls, (c - b) / calls);
    }
    unsigned long long ns = 0, cnt = 0;
    for (int i = 0; i < nprogs; i++) {
        char path[64], line[128];
        snprintf(path, sizeof path, "/proc/self/fdinfo/%d", progs[i]);
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f)) {
            unsigned long long v;
            if (sscanf(line, "run_time_ns: %llu", &v) == 1)
                ns += v;
            if (sscanf(line, "run_cnt: %llu", &v) == 1)
                cnt += v;
        }
        if (f)
            fclose(f);
    }
    if (nprogs)
        printf("bpf %llu %llu\n", ns, cnt);
    return 0;
}
