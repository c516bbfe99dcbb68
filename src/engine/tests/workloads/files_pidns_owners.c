/* files_pidns_owners: F_SETOWN owners and pidfds inside a child pid namespace, across
 * checkpoints. Runs as PID 1 of a new pid namespace (unshare --pid --fork). argv[1] = a
 * directory. Prepare, write DIR/ready, wait for SIGUSR1, verify, write DIR/result.
 * Child C (pid 2 here) idles; on signal 40 it creates DIR/io, on SIGUSR2 DIR/usr2.
 *   5  read end of a pipe, O_ASYNC, owned by C (F_SETOWN_EX PID) with F_SETSIG 40; 8 its write end
 *   6  /dev/null, owned by this process group (F_SETOWN_EX PGRP 1)
 *   7  pidfd of C                   9  pidfd of child D, exited and reaped
 * With argv[2] = "chld": no SIGCHLD may arrive after ready (the stand-ins a restore forks
 * for dead pidfds leave none). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static volatile sig_atomic_t chld;
static void on_chld(int s) { (void)s; chld++; }

static char io_path[600], usr2_path[600];
static void mark(const char *p)
{
	int fd = open(p, O_WRONLY | O_CREAT, 0644);
	if (fd >= 0)
		close(fd);
}
static void on_io(int s) { (void)s; mark(io_path); }
static void on_usr2(int s) { (void)s; mark(usr2_path); }

static int appeared(const char *p)
{
	for (int i = 0; i < 400; i++) {
		if (access(p, F_OK) == 0)
			return 1;
		nap(5);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	wl_start(argv[1]);
	/* a setup failure is reported in DIR/result, so the test can say what went wrong */
	setup_report = 1;
	/* fds the test runner leaked to us would collide with the numbers set up below */
	syscall(SYS_close_range, 3, ~0U, 0);
	snprintf(io_path, sizeof io_path, "%s/io", dir);
	snprintf(usr2_path, sizeof usr2_path, "%s/usr2", dir);
	if (getpid() != 1 || setsid() != 1)
		return setup_fail(20);
	/* the handlers are the child's; installed before fork so it has them from its start */
	struct sigaction si = { .sa_handler = on_io }, su = { .sa_handler = on_usr2 };
	sigaction(40, &si, NULL);
	sigaction(SIGUSR2, &su, NULL);
	pid_t c = fork();
	if (c == 0) {
		for (;;)
			nap(1000);
	}
	signal(40, SIG_IGN);
	signal(SIGUSR2, SIG_IGN);
	struct sigaction sc = { .sa_handler = on_chld };
	sigaction(SIGCHLD, &sc, NULL);
	int p[2];
	if (pipe(p))
		return setup_fail(30);
	at(p[0], 5);
	at(p[1], 8);
	struct f_owner_ex ox = { .type = F_OWNER_PID, .pid = c };
	if (fcntl(5, F_SETOWN_EX, &ox) || fcntl(5, F_SETSIG, 40) ||
	    fcntl(5, F_SETFL, fcntl(5, F_GETFL) | O_ASYNC | O_NONBLOCK))
		return setup_fail(31);
	at(open("/dev/null", O_RDONLY), 6);
	struct f_owner_ex og = { .type = F_OWNER_PGRP, .pid = getpgrp() };
	if (fcntl(6, F_SETOWN_EX, &og))
		return setup_fail(32);
	at((int)syscall(SYS_pidfd_open, c, 0), 7);
	pid_t d = fork();
	if (d == 0)
		_exit(0);
	at((int)syscall(SYS_pidfd_open, d, 0), 9);
	if (waitpid(d, NULL, 0) != d)
		return setup_fail(33);

	nap(50);
	int chld_before = chld;
	char ready[64];
	snprintf(ready, sizeof ready, "child=%d\n", c);
	ready_wait(ready);

	CHECK(getpid() == 1, "pid %d", getpid());
	struct f_owner_ex g;
	memset(&g, 0, sizeof g);
	CHECK(fcntl(5, F_GETOWN_EX, &g) == 0 && g.type == F_OWNER_PID && g.pid == c, "fd 5 owner %d/%d, not C %d",
	      g.type, g.pid, c);
	CHECK(fcntl(5, F_GETSIG) == 40, "fd 5 signal %d", fcntl(5, F_GETSIG));
	memset(&g, 0, sizeof g);
	CHECK(fcntl(6, F_GETOWN_EX, &g) == 0 && g.type == F_OWNER_PGRP && g.pid == 1, "fd 6 owner %d/%d", g.type, g.pid);
	CHECK(write(8, "x", 1) == 1 && appeared(io_path), "C got no signal 40 from the pipe it owns");
	CHECK(syscall(SYS_pidfd_send_signal, 7, SIGUSR2, NULL, 0) == 0 && appeared(usr2_path),
	      "C got no SIGUSR2 through its pidfd");
	errno = 0;
	CHECK(syscall(SYS_pidfd_send_signal, 9, 0, NULL, 0) == -1 && errno == ESRCH, "dead pidfd: errno %d", errno);
	/* the stand-ins a restore forks for dead pidfds leave no SIGCHLD behind */
	if (argc > 2 && strcmp(argv[2], "chld") == 0)
		CHECK(chld == chld_before, "%d SIGCHLD delivered since ready", chld - chld_before);
	finish();
}
