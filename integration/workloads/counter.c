/*
 * counter: the test rig's long-running workload.
 *
 * Usage: counter [FILE] [INTERVAL_MS=100] [clock]
 *
 * Every INTERVAL_MS it increments a counter, prints "count N" on stdout and, when FILE is given,
 * replaces FILE atomically (write FILE.tmp, rename) with "N\n", so a reader outside the container
 * never sees a torn value. SIGUSR1, SIGUSR2 and SIGHUP are reported as "signal N" lines on stdout
 * (and appended to FILE.signals), which lets tests check that a named or numbered signal reached
 * the container's init. SIGTERM and SIGINT end it cleanly with "exiting on signal N", exit 0:
 * a graceful stop (podman stop, ctr task kill) must not need SIGKILL. With "clock" (and FILE),
 * each tick also appends "N MONO_NS\n" to FILE.clock: CLOCK_MONOTONIC as this process reads it
 * (through its own vDSO), so a test sees the clock of a restored process go on, tick by tick.
 *
 * Build: gcc -static -O2 -o counter counter.c
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t pending[65];
static volatile sig_atomic_t stop_sig;

static void on_report(int sig) { pending[sig] = 1; }
static void on_stop(int sig) { stop_sig = sig; }

static void replace_file(const char *path, unsigned long n)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	fprintf(f, "%lu\n", n);
	fclose(f);
	rename(tmp, path);
}

static void append_clock(const char *path, unsigned long n)
{
	char cp[4096];
	struct timespec now;
	snprintf(cp, sizeof(cp), "%s.clock", path);
	clock_gettime(CLOCK_MONOTONIC, &now);
	FILE *f = fopen(cp, "a");
	if (!f)
		return;
	fprintf(f, "%lu %lld\n", n, (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
	fclose(f);
}

static void report_signal(const char *path, int sig)
{
	printf("signal %d\n", sig);
	fflush(stdout);
	if (!path)
		return;
	char sp[4096];
	snprintf(sp, sizeof(sp), "%s.signals", path);
	FILE *f = fopen(sp, "a");
	if (!f)
		return;
	fprintf(f, "%d\n", sig);
	fclose(f);
}

int main(int argc, char **argv)
{
	const char *path = argc > 1 && argv[1][0] ? argv[1] : NULL;
	long interval_ms = argc > 2 ? atol(argv[2]) : 100;
	if (interval_ms <= 0)
		interval_ms = 100;
	int clock_log = path && argc > 3 && strcmp(argv[3], "clock") == 0;

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_report;
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	unsigned long n = 0;
	for (;;) {
		for (int s = 1; s < 65; s++) {
			if (pending[s]) {
				pending[s] = 0;
				report_signal(path, s);
			}
		}
		if (stop_sig) {
			printf("exiting on signal %d\n", (int)stop_sig);
			fflush(stdout);
			return 0;
		}
		n++;
		printf("count %lu\n", n);
		fflush(stdout);
		if (path)
			replace_file(path, n);
		if (clock_log)
			append_clock(path, n);
		struct timespec ts = { interval_ms / 1000, (interval_ms % 1000) * 1000000L };
		/* EINTR from a signal just shortens this tick; the loop reports it at once. */
		nanosleep(&ts, NULL);
	}
}
