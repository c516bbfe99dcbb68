/* rounds.h: the round protocol of the container C/R workloads built by integration/tests/
 * cr_build (sysv_ipc, tcp_pair). In each round R a workload writes the marker
 * /PREFIX-ready-R[-SIDE], waits for /PREFIX-go-R (the test checkpoints and restores the
 * container meanwhile), checks from the inside and writes /PREFIX-ok-R[-SIDE], or
 * /PREFIX-fail-R[-SIDE] with the reason.
 *
 * Included by one .c file per binary: everything here is static inline. */
#ifndef FERRY_ROUNDS_H
#define FERRY_ROUNDS_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* the markers' name: "/ipc", "/tcp", ... (set by the workload) */
static const char *round_prefix = "/round";
/* with several processes, which one writes (NULL: a single one, no suffix) */
static const char *round_side;

/* Writes the marker /PREFIX-what-round[-SIDE] with the text fmt formats (empty when NULL);
 * exits 10 when it cannot be created, 11 when it cannot be written. */
static inline __attribute__((format(printf, 3, 4))) void mark(const char *what, int round,
							       const char *fmt, ...)
{
	char path[256], text[512] = "";
	if (round_side)
		snprintf(path, sizeof(path), "%s-%s-%d-%s", round_prefix, what, round, round_side);
	else
		snprintf(path, sizeof(path), "%s-%s-%d", round_prefix, what, round);
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(text, sizeof(text), fmt, ap);
		va_end(ap);
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		_exit(10);
	if (write(fd, text, strlen(text)) < 0)
		_exit(11);
	close(fd);
}

/* Writes /PREFIX-fail-round[-SIDE] with the reason and errno, then waits to be killed. */
static inline __attribute__((noreturn, format(printf, 2, 3))) void fail(int round, const char *fmt,
									 ...)
{
	char text[400];
	int e = errno;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	mark("fail", round, "%s (errno %d: %s)\n", text, e, strerror(e));
	for (;;)
		pause();
}

/* Waits for the test's go marker of the round, /PREFIX-go-round (never with a side). */
static inline void wait_go(int round)
{
	char path[256];
	snprintf(path, sizeof(path), "%s-go-%d", round_prefix, round);
	while (access(path, F_OK) != 0)
		usleep(10000);
}

#endif
