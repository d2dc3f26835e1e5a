/* Cost of one ioctl, for `cargo xtask bench`: times CALLS ioctl(TCGETS) on FILE (a char
 * device such as /dev/null answers -ENOTTY at once, so the figure is the syscall path and
 * whatever is attached to it), then CALLS getppid() as a syscall nobody traces. Prints one
 * line per round: "<ns per ioctl> <ns per getppid>". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE CALLS ROUNDS\n", argv[0]);
        return 2;
    }
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
    return 0;
}
