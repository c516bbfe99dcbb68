/*
 * dumpee: workloads for ferry's dump tests. Built with gcc -static by the tests.
 *
 * Usage: dumpee MODE [ARG]
 *   heap MIB     fill MIB of heap with a pattern (byte i = i % 251) and verify it each tick
 *   threads N    N extra threads, each ticking its own counter
 *   tree         session + process groups: child A (same group), child B (own group) with a
 *                grandchild, and a zombie child never waited for
 *   sigs         handlers, blocked signals pending (private, shared, an rt signal with a
 *                value), an interval timer and a POSIX timer
 *   churn        threads forking/reaping children and creating/joining threads nonstop
 *   seccomp      two stacked seccomp filters (the second with SECCOMP_FILTER_FLAG_LOG), a thread
 *   flock PATH   holds an exclusive flock on PATH
 *   avx          ymm0..ymm15 loaded with a known pattern, checked in an asm spin loop
 *
 * Prints "ready k=v ..." on stdout once set up, then "tick N" every 20 ms (the main thread).
 * Any self-check failure prints "CORRUPT ..." and exits 2.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

static volatile unsigned long thread_ticks[64];
static volatile int got_usr1;

static void tick_forever(unsigned char *buf, size_t len)
{
	for (unsigned long n = 0;; n++) {
		if (buf && n % 10 == 0)
			for (size_t i = 0; i < len; i += 4093)
				if (buf[i] != i % 251) {
					printf("CORRUPT heap offset %zu\n", i);
					fflush(stdout);
					exit(2);
				}
		printf("tick %lu\n", n);
		fflush(stdout);
		usleep(20000);
	}
}

static void *thread_main(void *arg)
{
	long i = (long)arg;
	for (;;) {
		thread_ticks[i]++;
		usleep(10000);
	}
	return NULL;
}

static void *noop(void *arg)
{
	return arg;
}

static void *forker(void *arg)
{
	for (;;) {
		pid_t p = fork();
		if (p == 0)
			_exit(0);
		if (p > 0)
			waitpid(p, NULL, 0);
	}
	return arg;
}

static void *cloner(void *arg)
{
	for (;;) {
		pthread_t t;
		if (pthread_create(&t, NULL, noop, NULL) == 0)
			pthread_join(t, NULL);
	}
	return arg;
}

static void handler(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	if (sig == SIGUSR1)
		got_usr1 = 1;
}

static void child_loop(void)
{
	for (;;)
		pause();
}

static void avx(void)
{
	static uint8_t pat[16][32] __attribute__((aligned(32)));
	for (int r = 0; r < 16; r++)
		for (int b = 0; b < 32; b++)
			pat[r][b] = (uint8_t)(0x40 + r * 2 + (b >= 16));
	printf("ready pid=%d\n", getpid());
	fflush(stdout);
	/* Load ymm0..15 and spin; every 2^24 rounds compare ymm0 and ymm15 with the pattern. */
	__asm__ volatile(
		"vmovdqa 0(%0), %%ymm0\n vmovdqa 32(%0), %%ymm1\n vmovdqa 64(%0), %%ymm2\n"
		"vmovdqa 96(%0), %%ymm3\n vmovdqa 128(%0), %%ymm4\n vmovdqa 160(%0), %%ymm5\n"
		"vmovdqa 192(%0), %%ymm6\n vmovdqa 224(%0), %%ymm7\n vmovdqa 256(%0), %%ymm8\n"
		"vmovdqa 288(%0), %%ymm9\n vmovdqa 320(%0), %%ymm10\n vmovdqa 352(%0), %%ymm11\n"
		"vmovdqa 384(%0), %%ymm12\n vmovdqa 416(%0), %%ymm13\n vmovdqa 448(%0), %%ymm14\n"
		"vmovdqa 480(%0), %%ymm15\n"
		"1: pause\n"
		"   vpcmpeqb 0(%0), %%ymm0, %%ymm0\n"
		"   vpmovmskb %%ymm0, %%eax\n"
		"   cmp $-1, %%eax\n"
		"   jne 2f\n"
		"   vmovdqa 0(%0), %%ymm0\n"
		"   jmp 1b\n"
		"2: ud2\n"
		:
		: "r"(pat)
		: "rax", "memory");
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "heap";
	long arg = argc > 2 ? atol(argv[2]) : 0;
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (!strcmp(mode, "heap")) {
		size_t len = (size_t)(arg ? arg : 16) << 20;
		unsigned char *buf = malloc(len);
		for (size_t i = 0; i < len; i++)
			buf[i] = i % 251;
		printf("ready pid=%d buf=%p len=%zu\n", getpid(), buf, len);
		tick_forever(buf, len);
	} else if (!strcmp(mode, "threads")) {
		long n = arg ? arg : 3;
		printf("ready pid=%d threads=%ld\n", getpid(), n + 1);
		for (long i = 0; i < n; i++) {
			pthread_t t;
			pthread_create(&t, NULL, thread_main, (void *)i);
		}
		/* Ready only once every thread exists. */
		while (1) {
			int all = 1;
			for (long i = 0; i < n; i++)
				all &= thread_ticks[i] > 0;
			if (all)
				break;
			usleep(1000);
		}
		printf("threads-up\n");
		tick_forever(NULL, 0);
	} else if (!strcmp(mode, "tree")) {
		/* 64 KiB of shared anonymous memory, seen by every task of the tree. */
		unsigned char *shm = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		for (int i = 0; i < 65536; i++)
			shm[i] = (i * 7 + 3) % 256;
		pid_t a = fork();
		if (a == 0)
			child_loop();
		pid_t b = fork();
		if (b == 0) {
			setpgid(0, 0);
			if (fork() == 0)
				child_loop();
			child_loop();
		}
		pid_t z = fork();
		if (z == 0)
			_exit(7);
		/* Wait until the zombie is one. */
		char path[64], st[512];
		snprintf(path, sizeof(path), "/proc/%d/stat", z);
		for (;;) {
			FILE *f = fopen(path, "r");
			if (f && fgets(st, sizeof(st), f) && strstr(st, ") Z "))
				break;
			if (f)
				fclose(f);
			usleep(1000);
		}
		/* And until B has its own group and its child. */
		for (;;) {
			if (getpgid(b) == b)
				break;
			usleep(1000);
		}
		usleep(50000);
		printf("ready pid=%d a=%d b=%d zombie=%d shm=%p\n", getpid(), a, b, z, shm);
		tick_forever(NULL, 0);
	} else if (!strcmp(mode, "sigs")) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = handler;
		sa.sa_flags = SA_SIGINFO | SA_RESTART;
		sigaction(SIGUSR1, &sa, NULL);
		sigaction(SIGUSR2, &sa, NULL);
		signal(SIGPIPE, SIG_IGN);
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		sigaddset(&set, SIGUSR2);
		sigaddset(&set, SIGRTMIN + 1);
		sigprocmask(SIG_BLOCK, &set, NULL);
		syscall(SYS_tgkill, getpid(), getpid(), SIGUSR1); /* private queue */
		kill(getpid(), SIGUSR2);                          /* shared queue */
		union sigval v = {.sival_int = 0xfe01};
		sigqueue(getpid(), SIGRTMIN + 1, v);
		struct itimerval it = {{3600, 0}, {3600, 0}};
		setitimer(ITIMER_REAL, &it, NULL);
		timer_t t;
		struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1};
		ev.sigev_value.sival_ptr = (void *)0x5157;
		timer_create(CLOCK_MONOTONIC, &ev, &t);
		struct itimerspec ts = {{7200, 0}, {7200, 0}};
		timer_settime(t, 0, &ts, NULL);
		printf("ready pid=%d handler=%p\n", getpid(), (void *)handler);
		tick_forever(NULL, 0);
	} else if (!strcmp(mode, "churn")) {
		/* A thread that forks and reaps children, another that creates and joins threads,
		 * all the time: the tree changes while ferry seizes it. */
		pthread_t t1, t2;
		pthread_create(&t1, NULL, forker, NULL);
		pthread_create(&t2, NULL, cloner, NULL);
		printf("ready pid=%d\n", getpid());
		tick_forever(NULL, 0);
	} else if (!strcmp(mode, "seccomp")) {
		/* Two allow-everything filters (distinct programs) and a thread inheriting both. */
		struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
		struct sock_filter allow2[] = {BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0),
					       BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
		struct sock_fprog p1 = {1, allow}, p2 = {2, allow2};
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
		if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p1) ||
		    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG, &p2)) {
			printf("CORRUPT seccomp setup failed\n");
			return 2;
		}
		pthread_t t;
		pthread_create(&t, NULL, thread_main, (void *)0);
		while (!thread_ticks[0])
			usleep(1000);
		printf("ready pid=%d\n", getpid());
		tick_forever(NULL, 0);
	} else if (!strcmp(mode, "flock")) {
		int fd = open(argv[2], O_RDWR | O_CREAT, 0600);
		if (fd < 0 || flock(fd, LOCK_EX)) {
			printf("CORRUPT flock %s failed\n", argv[2]);
			return 2;
		}
		printf("ready pid=%d fd=%d\n", getpid(), fd);
		tick_forever(NULL, 0);
	} else if (!strcmp(mode, "avx")) {
		avx();
	}
	fprintf(stderr, "unknown mode %s\n", mode);
	return 1;
}
