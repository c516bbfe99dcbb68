/* workload.h: the protocol every engine test workload shares (zdtm style). A workload prepares
 * its state under a directory, writes DIR/ready, waits for SIGUSR1 (the go signal, sent once the
 * test's dump/restore cycles are done), verifies from the inside and writes DIR/result: "PASS",
 * or what failed. Files appear whole: each is written to a temporary name and renamed.
 *
 * Two ways to report: CHECK collects every failed condition into `why` and finish() writes them
 * all (or PASS); REQUIRE stops at the first with fail(), which writes "FAIL: what (errno ...)"
 * to DIR/<result_name> and exits 1.
 *
 * Included by exactly one .c file per binary, so everything here is static; functions are
 * inline so that a workload using only part of this compiles without warnings.
 * A workload may define WL_PUT_EXIT (the exit code when a file cannot be written, default 3)
 * before including it. */
#ifndef FERRY_WORKLOAD_H
#define FERRY_WORKLOAD_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef WL_PUT_EXIT
#define WL_PUT_EXIT 3
#endif

static volatile sig_atomic_t go;
static const char *dir = ".";
/* where fail() writes; a forked helper task may point it at its own file */
static const char *result_name = "result";
/* what CHECK found wrong so far, "; "-separated */
static char why[4096];
/* set when setup failures must be reported in DIR/result too, not only by the exit code */
static int setup_report;

static inline void on_usr1(int s)
{
	(void)s;
	go = 1;
}

/* Takes d (an argument: it lives as long as the process) as DIR and installs the go signal's
 * handler (restartable, as signal() would: the go signal must not fail a blocking call). */
static inline void wl_start(const char *d)
{
	dir = d;
	struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_RESTART };
	sigaction(SIGUSR1, &sa, NULL);
}

/* DIR/name; the buffer is reused by the next call. */
static inline char *path(const char *name)
{
	static char p[600];
	snprintf(p, sizeof p, "%s/%s", dir, name);
	return p;
}

/* Writes text to DIR/name atomically (any task may call it: the temporary name has its pid). */
static inline void put(const char *name, const char *text)
{
	char p[600], t[640];
	snprintf(p, sizeof p, "%s/%s", dir, name);
	snprintf(t, sizeof t, "%s/.%s.tmp%d", dir, name, (int)getpid());
	int fd = open(t, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		_exit(WL_PUT_EXIT);
	size_t n = strlen(text);
	if (write(fd, text, n) != (ssize_t)n)
		_exit(WL_PUT_EXIT);
	close(fd);
	rename(t, p);
}

static inline void nap(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&t, &t) && errno == EINTR)
		;
}

/* A setup step failed: exit with its code, and with setup_report say so in DIR/result. */
static inline int setup_fail(int code)
{
	if (setup_report) {
		char t[128];
		snprintf(t, sizeof t, "setup failed: step %d, errno %d (%s)\n", code, errno, strerror(errno));
		put("result", t);
	}
	exit(code);
}

/* Moves fd to number want (setup_fail 50+want when fd is not open, 10+want when it cannot move). */
static inline void at(int fd, int want)
{
	if (fd < 0)
		setup_fail(50 + want);
	if (fd != want && (dup2(fd, want) != want || close(fd)))
		setup_fail(10 + want);
}

static inline void wait_go(void)
{
	while (!go)
		nap(10);
}

/* Writes DIR/ready with text, then waits for the go signal. */
static inline void ready_wait(const char *text)
{
	put("ready", text);
	wait_go();
}

#define CHECK(c, ...)                                                                              \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			snprintf(why + strlen(why), sizeof why - strlen(why), __VA_ARGS__);        \
			strcat(why, "; ");                                                         \
		}                                                                                  \
	} while (0)

/* Writes DIR/result (PASS, or every CHECK that failed) and idles until killed. */
static inline __attribute__((noreturn)) void finish(void)
{
	put("result", why[0] ? why : "PASS");
	for (;;)
		nap(1000);
}

/* Writes "FAIL: what (errno ...)" to DIR/<result_name> and exits 1. */
static inline __attribute__((noreturn, format(printf, 1, 2))) void fail(const char *fmt, ...)
{
	char b[400], m[450];
	int e = errno;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(b, sizeof b, fmt, ap);
	va_end(ap);
	snprintf(m, sizeof m, "FAIL: %s (errno %d %s)", b, e, strerror(e));
	put(result_name, m);
	_exit(1);
}

#define REQUIRE(c, ...)                                                                            \
	do {                                                                                       \
		if (!(c))                                                                          \
			fail(__VA_ARGS__);                                                         \
	} while (0)

/* Helpers several workloads share. */

/* The /proc/self/maps line of the mapping that starts at p ("" when there is none). */
static inline void maps_line(void *p, char *out, size_t n)
{
	char key[32], line[1024];
	snprintf(key, sizeof key, "%lx-", (unsigned long)p);
	out[0] = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, key, strlen(key))) {
			snprintf(out, n, "%s", line);
			break;
		}
	if (f)
		fclose(f);
}

/* CHECKs that the mapping at p (called what) has permissions and offset `perms` ("rw-s",
 * "r--s 00001000") and names file. */
static inline void check_maps(void *p, const char *what, const char *perms, const char *file)
{
	char line[1024];
	maps_line(p, line, sizeof line);
	CHECK(strstr(line, perms) && strstr(line, file), "%s maps %s", what, line);
}

/* Opens the mapping [p, p+len) through /proc/self/map_files. */
static inline int map_file(void *p, size_t len, int flags)
{
	char path[128];
	snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)p,
		 (unsigned long)p + len);
	return open(path, flags);
}

/* REQUIREs that socket fd has nothing queued. */
static inline void expect_empty(int fd)
{
	char b[8];
	errno = 0;
	ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
	REQUIRE(r < 0 && errno == EAGAIN, "fd %d should have nothing queued (got %zd)", fd, r);
}

#endif
