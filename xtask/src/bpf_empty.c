/* Empty eBPF programs on the hooks nodewatch uses, for `cargo xtask bench`: the floor any
 * program on a hook pays, measured in the same run as nodewatch's own programs on the same
 * events. Attaches a two-instruction program (`r0 = RET; exit`) to
 *   - syscalls:sys_enter_ioctl and sys_exit_ioctl (perf tracepoint, return 0: drop the
 *     record, as nodewatch's programs do),
 *   - cgroup_skb egress and ingress of CGROUP (a cgroup v2 folder; return 1: pass),
 * through links, so they run beside whatever else is attached there. Prints "ready", then
 * for every line read on stdin prints one line per program: "<hook> <run_time_ns> <run_cnt>"
 * (non-zero with kernel.bpf_stats_enabled=1) and "end". Exits at end of input.
 *
 * usage: bpf_empty CGROUP */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *names[4] = {"sys_enter_ioctl", "sys_exit_ioctl", "cgroup_skb_egress",
                               "cgroup_skb_ingress"};
static int progs[4];

static int load(int type, int expected_attach, int ret)
{
    struct bpf_insn insns[2];
    memset(insns, 0, sizeof insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
    insns[0].imm = ret;
    insns[1].code = BPF_JMP | BPF_EXIT;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = type;
    a.expected_attach_type = expected_attach;
    a.insns = (unsigned long)insns;
    a.insn_cnt = 2;
    a.license = (unsigned long)"GPL";
    int prog = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    if (prog < 0)
        perror("BPF_PROG_LOAD");
    return prog;
}

static int tracepoint(const char *event)
{
    int prog = load(BPF_PROG_TYPE_TRACEPOINT, 0, 0);
    if (prog < 0)
        return -1;
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
    return prog;
}

static int cgroup_skb(int cg, int attach)
{
    int prog = load(BPF_PROG_TYPE_CGROUP_SKB, attach, 1);
    if (prog < 0)
        return -1;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.link_create.prog_fd = prog;
    a.link_create.target_fd = cg;
    a.link_create.attach_type = attach;
    if (syscall(SYS_bpf, BPF_LINK_CREATE, &a, sizeof a) < 0) {
        perror("BPF_LINK_CREATE");
        return -1;
    }
    return prog;
}

static void stats(int prog, unsigned long long *ns, unsigned long long *cnt)
{
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", prog);
    FILE *f = fopen(path, "r");
    *ns = *cnt = 0;
    while (f && fgets(line, sizeof line, f)) {
        sscanf(line, "run_time_ns: %llu", ns);
        sscanf(line, "run_cnt: %llu", cnt);
    }
    if (f)
        fclose(f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CGROUP\n", argv[0]);
        return 2;
    }
    int cg = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (cg < 0) {
        perror(argv[1]);
        return 1;
    }
    progs[0] = tracepoint("sys_enter_ioctl");
    progs[1] = tracepoint("sys_exit_ioctl");
    progs[2] = cgroup_skb(cg, BPF_CGROUP_INET_EGRESS);
    progs[3] = cgroup_skb(cg, BPF_CGROUP_INET_INGRESS);
    for (int i = 0; i < 4; i++)
        if (progs[i] < 0)
            return 1;
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (fgets(buf, sizeof buf, stdin)) {
        for (int i = 0; i < 4; i++) {
            unsigned long long ns, cnt;
            stats(progs[i], &ns, &cnt);
            printf("%s %llu %llu\n", names[i], ns, cnt);
        }
        printf("end\n");
        fflush(stdout);
    }
    return 0;
}
