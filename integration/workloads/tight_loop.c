/*
 * tight_loop: a container init that never sleeps, for the freeze-then-seize tests.
 *
 * Usage: tight_loop FILE REPORT
 *
 * Keeps a counter both in memory and in FILE (meant to be on the container's /dev/shm tmpfs,
 * which a checkpoint archives while the cgroup is frozen), in a loop without any sleep: read
 * FILE, compare with the counter in memory, increment, write FILE back. A child meanwhile forks
 * and reaps short-lived grandchildren without pause. After a restore, the memory comes from the
 * moment the tree was seized and FILE from the moment the cgroup was frozen: if the tree ran
 * in between, the two differ and the loop appends "mismatch file=F memory=M" to REPORT (then
 * goes on from FILE's value). It also rewrites REPORT.iter with the loop count every 2^20 turns
 * so a test can see it advance.
 *
 * Build: gcc -static -O2 -o tight_loop tight_loop.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WIDTH 21 /* "%020lu\n" */

static void put(int fd, unsigned long v)
{
	char buf[WIDTH + 1];
	snprintf(buf, sizeof(buf), "%020lu\n", v);
	if (pwrite(fd, buf, WIDTH, 0) != WIDTH)
		_exit(3);
}

static unsigned long get(int fd)
{
	char buf[WIDTH + 1] = {0};
	if (pread(fd, buf, WIDTH, 0) != WIDTH)
		_exit(4);
	return strtoul(buf, NULL, 10);
}

static void note(const char *path, const char *line)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		return;
	if (write(fd, line, strlen(line)) < 0)
		_exit(5);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: tight_loop FILE REPORT\n");
		return 2;
	}
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 1;
	pid_t forker = fork();
	if (forker == 0) {
		for (;;) {
			pid_t c = fork();
			if (c == 0)
				_exit(0);
			if (c > 0)
				waitpid(c, NULL, 0);
		}
	}
	char iter_path[4096];
	snprintf(iter_path, sizeof(iter_path), "%s.iter", argv[2]);
	unsigned long n = 0, turns = 0;
	put(fd, n);
	for (;;) {
		unsigned long v = get(fd);
		if (v != n) {
			char line[128];
			snprintf(line, sizeof(line), "mismatch file=%lu memory=%lu\n", v, n);
			note(argv[2], line);
			n = v;
		}
		n++;
		put(fd, n);
		if ((++turns & ((1UL << 20) - 1)) == 0) {
			char line[64];
			snprintf(line, sizeof(line), "%lu\n", turns);
			int f = open(iter_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (f >= 0) {
				if (write(f, line, strlen(line)) < 0)
					_exit(5);
				close(f);
			}
		}
	}
}
