/*
 * The machine's own cost of moving a process into a cgroup v1 cgroup, for the overhead bench.
 *
 * Writing a pid to cgroup.procs takes the kernel's global cgroup_threadgroup_rwsem for
 * writing, whose first writer after a quiet spell waits for an RCU grace period (unless the
 * hierarchy is mounted with favordynmods). Every container start pays it once, in the runtime
 * (runc and ferry alike: libcontainer's intermediate process moves itself into the container's
 * cgroups). Each round: a fresh child moves itself into a fresh cgroup under DIR; the time of
 * that one write is taken; then GAP_MS of quiet, as between two restores.
 *
 * usage: cgattach DIR ROUNDS GAP_MS   prints "median_us min_us"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: cgattach DIR ROUNDS GAP_MS\n");
		return 2;
	}
	int rounds = atoi(argv[2]), gap = atoi(argv[3]);
	if (rounds < 1 || rounds > 1000) {
		fprintf(stderr, "cgattach: ROUNDS out of range\n");
		return 2;
	}
	long long *t = calloc(rounds, sizeof(*t));
	for (int i = 0; i < rounds; i++) {
		char dir[4096], procs[4200];
		snprintf(dir, sizeof(dir), "%s/ferry-cgattach-%d-%d", argv[1], getpid(), i);
		snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
		if (mkdir(dir, 0755) && errno != EEXIST) {
			fprintf(stderr, "cgattach: mkdir %s: %s\n", dir, strerror(errno));
			return 1;
		}
		int p[2];
		if (pipe(p))
			return 1;
		pid_t pid = fork();
		if (pid == 0) {
			char buf[32];
			int n = snprintf(buf, sizeof(buf), "%d", getpid());
			int fd = open(procs, O_WRONLY);
			long long t0 = now_us();
			if (fd < 0 || write(fd, buf, n) != n)
				_exit(1);
			long long d = now_us() - t0;
			_exit(write(p[1], &d, sizeof(d)) == sizeof(d) ? 0 : 1);
		}
		int st = 0;
		waitpid(pid, &st, 0);
		if (read(p[0], &t[i], sizeof(t[i])) != sizeof(t[i]) || !WIFEXITED(st) ||
		    WEXITSTATUS(st)) {
			fprintf(stderr, "cgattach: the child could not move into %s\n", dir);
			rmdir(dir);
			return 1;
		}
		close(p[0]);
		close(p[1]);
		rmdir(dir);
		usleep(gap * 1000);
	}
	qsort(t, rounds, sizeof(*t), cmp);
	printf("%lld %lld\n", t[(rounds - 1) / 2], t[0]);
	return 0;
}
