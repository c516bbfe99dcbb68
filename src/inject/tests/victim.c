/* Victim for ferry-inject's tests: sets state only the task can report, prints it on the first
 * line, then proves it keeps running correctly by printing a counter. Mode "sleep" ticks every
 * 20 ms through nanosleep (so it is usually interrupted inside a restartable syscall); mode "spin"
 * counts in user space without syscalls between ticks. Any failed nanosleep exits with status 3:
 * that is what a botched syscall restart after a cure looks like. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char altstack[65536];
static void handler(int sig, siginfo_t *si, void *uc) { (void)sig; (void)si; (void)uc; }

/* Mode "threads": a second thread with its own altstack and signal mask, sleeping in a loop. */
static char thread_altstack[32768];
static volatile int thread_ready;
static void *thread_main(void *arg)
{
	(void)arg;
	stack_t ss = { .ss_sp = thread_altstack, .ss_size = sizeof(thread_altstack), .ss_flags = 0 };
	if (sigaltstack(&ss, NULL)) exit(20);
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	printf("thread_tid=%ld thread_altsp=%lx thread_altsize=%lu\n", (long)syscall(SYS_gettid),
	       (unsigned long)thread_altstack, (unsigned long)sizeof(thread_altstack));
	fflush(stdout);
	thread_ready = 1;
	for (;;) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		if (nanosleep(&ts, NULL) != 0) {
			printf("BAD thread nanosleep errno=%d\n", errno);
			fflush(stdout);
			exit(4);
		}
	}
	return NULL;
}


/* Mode "avx": ymm0-15 hold a known pattern across a raw nanosleep syscall, during which the
 * tests inject; any register the cure fails to restore makes the victim exit with status 5. */
static unsigned char pat[16][32], out[16][32];
#define LD(i) "vmovdqu " #i "*32(%[p]), %%ymm" #i "\n\t"
#define ST(i) "vmovdqu %%ymm" #i ", " #i "*32(%[o])\n\t"
__attribute__((target("avx"))) static void avx_loop(void)
{
	for (int i = 0; i < 16; i++)
		for (int j = 0; j < 32; j++)
			pat[i][j] = (unsigned char)(i * 32 + j + 1);
	for (unsigned long n = 0;; n++) {
		printf("tick %lu\n", n);
		fflush(stdout);
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		long ret;
		asm volatile(LD(0) LD(1) LD(2) LD(3) LD(4) LD(5) LD(6) LD(7) LD(8) LD(9) LD(10) LD(11) LD(12) LD(13) LD(14) LD(15) "syscall\n\t" ST(0) ST(1) ST(2) ST(3) ST(4) ST(5) ST(6) ST(7) ST(8) ST(9) ST(10) ST(11) ST(12) ST(13) ST(14) ST(15)
			     : "=a"(ret)
			     : "a"((long)SYS_nanosleep), "D"(&ts), "S"(0L), [p] "r"(pat), [o] "r"(out)
			     : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
		if (ret != 0) {
			printf("BAD nanosleep ret=%ld\n", ret);
			fflush(stdout);
			exit(3);
		}
		if (memcmp(pat, out, sizeof(pat)) != 0) {
			printf("BAD ymm state lost\n");
			fflush(stdout);
			exit(5);
		}
	}
}

int main(int argc, char **argv)
{
	int spin = argc > 1 && strcmp(argv[1], "spin") == 0;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	if (sigaction(SIGUSR1, &sa, NULL)) return 10;
	signal(SIGPIPE, SIG_IGN);

	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0 };
	if (sigaltstack(&ss, NULL)) return 11;

	struct itimerval it = { .it_interval = { 100, 250000 }, .it_value = { 1000, 0 } };
	if (setitimer(ITIMER_REAL, &it, NULL)) return 12;
	umask(027);

	/* A POSIX timer that never fires in a test's lifetime (SIGEV_NONE, 30 s, 7.5 s period). */
	timer_t timer;
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_NONE;
	if (timer_create(CLOCK_MONOTONIC, &sev, &timer)) return 18;
	struct itimerspec its = { .it_interval = { 7, 500000000 }, .it_value = { 30, 0 } };
	if (timer_settime(timer, 0, &its, NULL)) return 19;
	if (prctl(PR_SET_PDEATHSIG, SIGWINCH)) return 13;

	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	sigprocmask(SIG_BLOCK, &block, NULL);

	/* A known pattern for the memory-draining tests: byte i = (i * 131 + (i >> 12)) & 0xff. */
	unsigned long buflen = 4ul << 20;
	unsigned char *buf = mmap(NULL, buflen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) return 14;
	for (unsigned long i = 0; i < buflen; i++)
		buf[i] = (unsigned char)(i * 131 + (i >> 12));

	printf("pid=%d handler=%lx altsp=%lx altsize=%lu buf=%lx buflen=%lu timer=%ld\n", getpid(),
	       (unsigned long)handler, (unsigned long)altstack, (unsigned long)sizeof(altstack),
	       (unsigned long)buf, buflen, (long)(intptr_t)timer);
	fflush(stdout);

	if (strcmp(argc > 1 ? argv[1] : "", "seccomp") == 0) {
		/* A container-like filter the injector must not be subject to: memfd_create -> EPERM. */
		struct sock_filter f[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_memfd_create, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = { .len = 4, .filter = f };
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
			return 17;
		long r = syscall(SYS_memfd_create, "x", 0);
		printf("memfd_denied=%d\n", r == -1 && errno == EPERM);
	}

	if (strcmp(argc > 1 ? argv[1] : "", "threads") == 0) {
		pthread_t t;
		if (pthread_create(&t, NULL, thread_main, NULL)) return 15;
		while (!thread_ready)
			usleep(1000);
	}

	if (strcmp(argc > 1 ? argv[1] : "", "avx") == 0) {
		if (!__builtin_cpu_supports("avx")) {
			printf("NOAVX\n");
			return 16;
		}
		avx_loop();
	}

	volatile unsigned long spins = 0;
	for (unsigned long n = 0;; n++) {
		printf("tick %lu\n", n);
		fflush(stdout);
		if (spin) {
			for (unsigned long i = 0; i < (1ul << 22); i++)
				spins++;
			continue;
		}
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		if (nanosleep(&ts, NULL) != 0) {
			printf("BAD nanosleep errno=%d\n", errno);
			fflush(stdout);
			exit(3);
		}
	}
}
