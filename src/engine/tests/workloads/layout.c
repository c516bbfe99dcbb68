/* layout: a restore-test workload that checks its own state from the inside.
 * Memory: private anon with a pattern and an mprotect'd read-only middle, a PROT_NONE guard
 * region, a MADV_NOHUGEPAGE region, a MADV_DONTFORK region, private (COW-modified) and shared
 * file mappings of DATA_FILE, a stack grown by 1 MiB.  CPU: a pattern held in ymm15 across a raw
 * nanosleep syscall (the dump lands there: XSAVE must come back).  Signals: a POSIX timer and
 * ITIMER_REAL ticking (the SIGALRM handler runs on a sigaltstack and checks it), SIGUSR2 kept
 * pending behind a blocked mask.
 * Every 10 ms it verifies all of it and rewrites STATUS_FILE (open/write/close):
 *   gen=N ticks=T alrm=A ok=1 pid=P      or      BAD <what>
 * Usage: layout STATUS_FILE DATA_FILE   (gcc -O1 -static -mavx2) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MB (1024UL * 1024)
static const char *status_path;
static unsigned char *anon, *guard, *nohuge, *dontfork, *fpriv, *fshared;
static volatile unsigned long ticks, alrm, alrm_bad;
static char altstack[64 * 1024];
static volatile uint64_t stack_sum;

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	int fd = open(status_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		if (write(fd, buf, n) < 0) {}
		close(fd);
	}
}

static void bad(const char *what)
{
	report("BAD %s pid=%d\n", what, getpid());
	for (;;) pause();
}

static void on_tick(int sig) { (void)sig; ticks++; }
static void on_alrm(int sig)
{
	(void)sig;
	char here;
	if (&here < altstack || &here >= altstack + sizeof(altstack))
		alrm_bad++;
	alrm++;
}

static unsigned char pat(unsigned long i, unsigned k) { return (unsigned char)((i * 13 + k) % 253); }

static uint64_t grow_stack(int depth)
{
	volatile unsigned char big[64 * 1024];
	for (unsigned i = 0; i < sizeof(big); i += 512)
		big[i] = (unsigned char)(i + depth);
	uint64_t s = big[depth * 512 % sizeof(big)];
	if (depth < 16)
		s += grow_stack(depth + 1);
	return s;
}

/* ymm15 = pattern, raw nanosleep, compare: returns 1 when ymm15 survived. */
static int avx_sleep(const struct timespec *ts)
{
	static const uint8_t pattern[32] __attribute__((aligned(32))) = {
		1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
		17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 };
	uint32_t mask;
	long ret;
	__asm__ volatile(
		"vmovdqa %[p], %%ymm15\n\t"
		"mov $35, %%eax\n\t"
		"mov %[ts], %%rdi\n\t"
		"xor %%esi, %%esi\n\t"
		"syscall\n\t"
		"mov %%rax, %[ret]\n\t"
		"vpcmpeqb %[p], %%ymm15, %%ymm14\n\t"
		"vpmovmskb %%ymm14, %[m]\n\t"
		"vzeroupper\n\t"
		: [m] "=r"(mask), [ret] "=r"(ret)
		: [p] "m"(pattern), [ts] "r"(ts)
		: "rax", "rdi", "rsi", "rcx", "r11", "memory", "xmm14", "xmm15");
	(void)ret;
	return mask == 0xffffffffu;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	status_path = argv[1];
	const char *data = argv[2];

	anon = mmap(NULL, 4 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	guard = mmap(NULL, 64 * 1024, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	nohuge = mmap(NULL, 4 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dontfork = mmap(NULL, 256 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (anon == MAP_FAILED || guard == MAP_FAILED || nohuge == MAP_FAILED || dontfork == MAP_FAILED)
		return 3;
	for (unsigned long i = 0; i < 4 * MB; i++) {
		anon[i] = pat(i, 1);
		nohuge[i] = pat(i, 2);
	}
	for (unsigned long i = 0; i < 256 * 1024; i++)
		dontfork[i] = pat(i, 3);
	if (mprotect(anon + MB, MB, PROT_READ) || madvise(nohuge, 4 * MB, MADV_NOHUGEPAGE) ||
	    madvise(dontfork, 256 * 1024, MADV_DONTFORK))
		return 4;

	int fd = open(data, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 5;
	for (unsigned long i = 0; i < 64 * 1024; i++) {
		unsigned char c = pat(i, 4);
		if (write(fd, &c, 1) != 1)
			return 5;
	}
	fpriv = mmap(NULL, 64 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	fshared = mmap(NULL, 64 * 1024, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (fpriv == MAP_FAILED || fshared == MAP_FAILED)
		return 6;
	memset(fpriv, 0xaa, 4096);          /* COW copy: file keeps pattern 4 */
	memset(fshared + 4096, 0x55, 4096); /* written through to the file */
	stack_sum = grow_stack(0);

	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
	struct sigaction sa = { 0 };
	if (sigaltstack(&ss, NULL))
		return 7;
	sa.sa_handler = on_alrm;
	sa.sa_flags = SA_RESTART | SA_ONSTACK;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = on_tick;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGRTMIN, &sa, NULL);
	struct itimerval it = { { 0, 50000 }, { 0, 50000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN };
	timer_t tid;
	if (timer_create(CLOCK_MONOTONIC, &sev, &tid))
		return 8;
	struct itimerspec its = { { 0, 20000000 }, { 0, 20000000 } };
	timer_settime(tid, 0, &its, NULL);
	sigset_t blk;
	sigemptyset(&blk);
	sigaddset(&blk, SIGUSR2);
	sigprocmask(SIG_BLOCK, &blk, NULL);
	raise(SIGUSR2);

	struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (unsigned long gen = 1;; gen++) {
		if (!avx_sleep(&ts))
			bad("ymm15");
		for (unsigned long i = 0; i < 4 * MB; i += 997)
			if (anon[i] != pat(i, 1) || nohuge[i] != pat(i, 2))
				bad("anon");
		for (unsigned long i = 0; i < 256 * 1024; i += 997)
			if (dontfork[i] != pat(i, 3))
				bad("dontfork");
		for (unsigned long i = 0; i < 64 * 1024; i += 101) {
			/* page 1 was never COW'd privately: it shows the shared write */
			unsigned char sh = (i >= 4096 && i < 8192) ? 0x55 : pat(i, 4);
			if (fpriv[i] != (i < 4096 ? 0xaa : sh))
				bad("file private");
			if (fshared[i] != sh)
				bad("file shared");
		}
		if (stack_sum != grow_stack(0))
			bad("stack");
		sigset_t pend;
		sigpending(&pend);
		if (!sigismember(&pend, SIGUSR2))
			bad("pending SIGUSR2");
		if (alrm_bad)
			bad("altstack");
		report("gen=%lu ticks=%lu alrm=%lu ok=1 pid=%d\n", gen, ticks, alrm, getpid());
	}
}
