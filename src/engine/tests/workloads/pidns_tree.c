/* A process tree meant to run as PID 1 of its own pid namespace, for the pid namespace tests.
 *
 *   pidns_tree DIR
 *
 * root (PID 1, session leader) with a thread; child "a" leading its own process group with a
 * child "a1" in that group; child "b" in the root's group. Every task keeps a buffer with its
 * own pattern and, every 20 ms, rewrites DIR/<role> (via rename, so readers never see half a
 * line) with what it sees from the inside:
 *   pid ppid pgid sid tid ok counter
 * ok is 1 while its whole buffer still holds its pattern. The root also reaps any child that
 * exits (it is an init). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF (1 << 20)

static const char *dir;

static void fill(unsigned char *b, int seed)
{
	for (int i = 0; i < BUF; i++)
		b[i] = (unsigned char)((i * 7 + seed) % 251);
}

static int check(const unsigned char *b, int seed)
{
	for (int i = 0; i < BUF; i++)
		if (b[i] != (unsigned char)((i * 7 + seed) % 251))
			return 0;
	return 1;
}

static void report(const char *role, int ok, long counter)
{
	char path[512], tmp[520], line[256];
	snprintf(path, sizeof(path), "%s/%s", dir, role);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int n = snprintf(line, sizeof(line), "%d %d %d %d %ld %d %ld\n", getpid(), getppid(),
			 getpgrp(), getsid(0), (long)syscall(SYS_gettid), ok, counter);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, line, n) != n) {
		close(fd);
		return;
	}
	close(fd);
	rename(tmp, path);
}

static void run(const char *role, int seed, int reap)
{
	unsigned char *b = malloc(BUF);
	fill(b, seed);
	for (long c = 0;; c++) {
		report(role, check(b, seed), c);
		if (reap)
			while (waitpid(-1, NULL, WNOHANG | __WALL) > 0)
				;
		usleep(20000);
	}
}

static void *thread_main(void *arg)
{
	(void)arg;
	run("thread", 5, 0);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: pidns_tree DIR\n");
		return 2;
	}
	dir = argv[1];
	if (getsid(0) != getpid())
		setsid();
	pid_t a = fork();
	if (a == 0) {
		setpgid(0, 0);
		if (fork() == 0)
			run("a1", 3, 0);
		run("a", 2, 0);
	}
	if (fork() == 0)
		run("b", 4, 0);
	pthread_t t;
	pthread_create(&t, NULL, thread_main, NULL);
	run("root", 1, 1);
	return 0;
}
