/*
 * frozen_loop: a tree for the freeze-then-seize tests, that never stops running user code.
 *
 * Usage: frozen_loop CGROUP_NAME SHARED_FILE
 *
 * Starts a session of its own, waits until /proc/self/cgroup names CGROUP_NAME (the test moves it there), then forks a child
 * that stops itself with SIGSTOP, and starts a thread that, without pause, increments a counter
 * kept in a global (found in the memory images by the magic before it) and copies it into the
 * first 8 bytes of SHARED_FILE, mapped MAP_SHARED (the test reads it there). The main thread
 * sleeps in 1 ms naps.
 *
 * Build: gcc -static -O2 -pthread -o frozen_loop frozen_loop.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile struct {
	uint64_t magic;
	uint64_t value;
} g = {0x706f6f6c7a727266ULL, 0};

static volatile uint64_t *shared;

static void *spin(void *arg)
{
	(void)arg;
	for (;;) {
		g.value++;
		shared[0] = g.value;
	}
	return NULL;
}

static int in_cgroup(const char *name)
{
	char buf[4096];
	int fd = open("/proc/self/cgroup", O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return strstr(buf, name) != NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	setsid(); /* a tree of its own, as a container's init */
	for (int i = 3; i < 1024; i++) /* nothing inherited from the test harness */
		close(i);
	while (!in_cgroup(argv[1]))
		usleep(1000);
	int fd = open(argv[2], O_RDWR);
	if (fd < 0 || ftruncate(fd, 4096) != 0)
		return 3;
	shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (shared == MAP_FAILED)
		return 4;
	close(fd);
	if (fork() == 0) {
		raise(SIGSTOP);
		for (;;)
			pause();
	}
	pthread_t t;
	if (pthread_create(&t, NULL, spin, NULL) != 0)
		return 5;
	for (;;) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
}
