/* files_ghostfifo_pidfd: unlinked FIFOs with unread bytes and pidfds of dead processes, across
 * checkpoints (zdtm style). argv[1] = a directory. Prepare, write DIR/ready, wait for SIGUSR1,
 * verify from the inside, write DIR/result (PASS or what failed), idle until killed.
 *   3  DIR/ufifo O_RDONLY|O_NONBLOCK   4  the same FIFO O_WRONLY; 700 unread bytes; unlinked
 *   5  DIR/ufifo2 O_RDWR, 300 unread bytes, unlinked (mode 0640)
 *   6  pidfd of child A, which exited (status 3) and was reaped; 8 = dup of 6 (one description)
 *   7  a second pidfd of A (O_NONBLOCK) opened before it died: another description, same pid
 *   9  pidfd of child B, which exited with status 7 and is left a zombie (not reaped)
 * Child E (alive) holds every fd too: fd 6 is one description in two tasks.
 * DIR/ready says "child=B live=E". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static int pidfd_open(pid_t pid, int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
static int pidfd_signal(int fd, int sig) { return (int)syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0); }

static int readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void link_of(int fd, char *out, size_t n)
{
	char p[64];
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	ssize_t r = readlink(p, out, n - 1);
	out[r > 0 ? r : 0] = 0;
}

int main(int argc, char **argv)
{
	char buf[4096], want[4096];
	if (argc < 2)
		return 2;
	wl_start(argv[1]);
	/* fds the test runner leaked to us would collide with the numbers set up below */
	syscall(SYS_close_range, 3, ~0U, 0);

	if (mkfifo(path("ufifo"), 0600) || mkfifo(path("ufifo2"), 0640))
		return 30;
	chmod(path("ufifo2"), 0640);
	at(open(path("ufifo"), O_RDONLY | O_NONBLOCK), 3);
	at(open(path("ufifo"), O_WRONLY), 4);
	at(open(path("ufifo2"), O_RDWR), 5);
	for (int i = 0; i < 700; i++)
		buf[i] = (char)(i * 5 + 1);
	if (write(4, buf, 700) != 700 || write(5, buf + 100, 300) != 300)
		return 31;
	if (unlink(path("ufifo")) || unlink(path("ufifo2")))
		return 32;

	pid_t a = fork();
	if (a == 0)
		_exit(3);
	at(pidfd_open(a, 0), 6);
	at(pidfd_open(a, O_NONBLOCK), 7);
	int st = 0;
	if (waitpid(a, &st, 0) != a || !WIFEXITED(st) || WEXITSTATUS(st) != 3)
		return 33;
	if (dup2(6, 8) != 8)
		return 34;
	pid_t b = fork();
	if (b == 0)
		_exit(7);
	at(pidfd_open(b, 0), 9);
	siginfo_t si;
	memset(&si, 0, sizeof si);
	/* B is a zombie once this says so; WNOWAIT leaves it unreaped */
	if (waitid(P_PID, b, &si, WEXITED | WNOWAIT) || si.si_pid != b)
		return 35;

	pid_t live = fork();
	if (live == 0) {
		for (;;)
			nap(1000);
	}
	char ready[64];
	snprintf(ready, sizeof ready, "child=%d live=%d\n", b, live);
	ready_wait(ready);

	/* the unlinked FIFOs: same name (deleted), one pipe for 3 and 4, bytes in order */
	char l[700], e[700];
	struct stat s3, s4, s5;
	link_of(3, l, sizeof l);
	snprintf(e, sizeof e, "%s (deleted)", path("ufifo"));
	CHECK(strcmp(l, e) == 0, "fd 3 is %s", l);
	CHECK(access(path("ufifo"), F_OK) != 0 && access(path("ufifo2"), F_OK) != 0,
	      "an unlinked FIFO has a name again");
	CHECK(fstat(3, &s3) == 0 && fstat(4, &s4) == 0 && fstat(5, &s5) == 0, "fstat");
	CHECK(S_ISFIFO(s3.st_mode) && s3.st_nlink == 0 && s3.st_ino == s4.st_ino, "fds 3 and 4: one unlinked FIFO");
	CHECK(S_ISFIFO(s5.st_mode) && (s5.st_mode & 07777) == 0640 && s5.st_ino != s3.st_ino, "fd 5 mode %o", s5.st_mode);
	CHECK((fcntl(3, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK), "fd 3 flags");
	CHECK((fcntl(4, F_GETFL) & O_ACCMODE) == O_WRONLY && (fcntl(5, F_GETFL) & O_ACCMODE) == O_RDWR, "fds 4, 5 flags");
	for (int i = 0; i < 700; i++)
		want[i] = (char)(i * 5 + 1);
	memset(buf, 0, sizeof buf);
	CHECK(read(3, buf, sizeof buf) == 700 && !memcmp(buf, want, 700), "fd 3: the 700 bytes");
	CHECK(write(4, "again", 5) == 5 && read(3, buf, 16) == 5 && !memcmp(buf, "again", 5), "fd 4 -> fd 3");
	fcntl(5, F_SETFL, O_NONBLOCK);
	CHECK(read(5, buf, sizeof buf) == 300 && !memcmp(buf, want + 100, 300), "fd 5: the 300 bytes");

	/* pidfds of the dead, reaped A */
	CHECK(readable(6) && readable(7) && readable(8), "a pidfd of a dead process does not poll readable");
	errno = 0;
	CHECK(pidfd_signal(6, 0) == -1 && errno == ESRCH, "pidfd_send_signal on fd 6: errno %d", errno);
	errno = 0;
	CHECK(pidfd_signal(7, SIGKILL) == -1 && errno == ESRCH, "pidfd_send_signal on fd 7: errno %d", errno);
	memset(&si, 0, sizeof si);
	errno = 0;
	CHECK(waitid(P_PIDFD, 6, &si, WEXITED | WNOHANG) == -1 && errno == ECHILD, "waitid on fd 6: errno %d", errno);
	struct stat p6, p7, p8;
	CHECK(fstat(6, &p6) == 0 && fstat(7, &p7) == 0 && fstat(8, &p8) == 0 && p6.st_ino == p7.st_ino &&
		      p6.st_ino == p8.st_ino, "fds 6, 7, 8 name one process");
	CHECK(!(fcntl(6, F_GETFL) & O_NONBLOCK) && (fcntl(7, F_GETFL) & O_NONBLOCK), "fds 6/7 flags");
	CHECK(!(fcntl(8, F_GETFL) & O_NONBLOCK), "fd 8 flags");
	fcntl(6, F_SETFL, O_NONBLOCK);
	CHECK(fcntl(8, F_GETFL) & O_NONBLOCK, "fd 8 is not fd 6's description");
	/* E's fd 6: the same description (its flags changed with ours) naming the same process */
	char ep[64], line[128];
	long eflags = -1;
	snprintf(ep, sizeof ep, "/proc/%d/fdinfo/6", live);
	FILE *ef = fopen(ep, "r");
	while (ef && fgets(line, sizeof line, ef))
		if (sscanf(line, "flags: %lo", &eflags) == 1)
			break;
	if (ef)
		fclose(ef);
	CHECK(eflags >= 0 && (eflags & O_NONBLOCK), "E's fd 6 is not this task's description (flags %lo)", eflags);
	struct stat pe;
	snprintf(ep, sizeof ep, "/proc/%d/fd/6", live);
	CHECK(stat(ep, &pe) == 0 && pe.st_ino == p6.st_ino, "E's fd 6 names another process");

	/* the zombie B: readable, and waitid through the pidfd reaps it with its status */
	CHECK(readable(9), "pidfd of the zombie does not poll readable");
	memset(&si, 0, sizeof si);
	CHECK(waitid(P_PIDFD, 9, &si, WEXITED) == 0 && si.si_pid == b && si.si_code == CLD_EXITED &&
		      si.si_status == 7, "waitid on the zombie's pidfd: pid %d code %d status %d", si.si_pid, si.si_code, si.si_status);
	errno = 0;
	CHECK(pidfd_signal(9, 0) == -1 && errno == ESRCH, "the reaped zombie still takes signals");

	finish();
}
