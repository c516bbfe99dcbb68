/* files_pty: a pty pair inside the tree, the slave being the session's controlling terminal,
 * across checkpoints (zdtm style). argv[1] = a directory. The process is a session leader
 * without a terminal. Prepare, write DIR/ready, wait for SIGUSR1, verify, write DIR/result.
 *   3  pty master (O_RDWR|O_NOCTTY)
 *   4  its slave, opened without O_NOCTTY: the controlling terminal; ECHO off, VERASE ^H,
 *      window 40x120
 *   5  the slave again, O_RDONLY|O_NONBLOCK (a second description) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static ssize_t read_some(int fd, char *b, size_t n)
{
	for (int i = 0; i < 200; i++) {
		ssize_t r = read(fd, b, n);
		if (r > 0)
			return r;
		nap(5);
	}
	return -1;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	wl_start(argv[1]);
	signal(SIGHUP, SIG_IGN);
	signal(SIGTTOU, SIG_IGN);
	if (getsid(0) != getpid())
		return 20;
	at(posix_openpt(O_RDWR | O_NOCTTY), 3);
	if (grantpt(3) || unlockpt(3))
		return 21;
	char name[64];
	snprintf(name, sizeof name, "%s", ptsname(3));
	at(open(name, O_RDWR), 4);
	struct termios t;
	tcgetattr(4, &t);
	t.c_lflag &= ~ECHO;
	t.c_cc[VERASE] = 0x08;
	tcsetattr(4, TCSANOW, &t);
	struct winsize ws = { .ws_row = 40, .ws_col = 120 };
	ioctl(3, TIOCSWINSZ, &ws);
	at(open(name, O_RDONLY | O_NONBLOCK), 5);
	int index = -1;
	ioctl(3, TIOCGPTN, &index);

	ready_wait("ready\n");

	int now = -1;
	CHECK(ioctl(3, TIOCGPTN, &now) == 0 && now == index, "pty index %d, was %d", now, index);
	char l[128];
	ssize_t ln = readlink("/proc/self/fd/4", l, sizeof l - 1);
	l[ln > 0 ? ln : 0] = 0;
	CHECK(strcmp(l, name) == 0, "slave is %s, not %s", l, name);
	pid_t sid = -1;
	CHECK(ioctl(4, TIOCGSID, &sid) == 0 && sid == getpid(), "not our controlling terminal (sid %d)", sid);
	CHECK(tcgetpgrp(4) == getpgrp(), "foreground group %d", tcgetpgrp(4));
	int ctty = open("/dev/tty", O_RDWR | O_NOCTTY);
	CHECK(ctty >= 0, "/dev/tty does not open: no controlling terminal");
	close(ctty);
	CHECK(tcgetattr(4, &t) == 0 && !(t.c_lflag & ECHO) && t.c_cc[VERASE] == 0x08, "termios");
	CHECK(ioctl(4, TIOCGWINSZ, &ws) == 0 && ws.ws_row == 40 && ws.ws_col == 120, "winsize %dx%d",
	      ws.ws_row, ws.ws_col);
	CHECK((fcntl(5, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK), "fd 5 flags");
	char b[64] = "";
	CHECK(write(3, "ping\n", 5) == 5 && read_some(4, b, sizeof b) == 5 && !memcmp(b, "ping\n", 5),
	      "master to slave");
	fcntl(3, F_SETFL, O_NONBLOCK);
	CHECK(write(4, "pong", 4) == 4 && read_some(3, b, sizeof b) == 4 && !memcmp(b, "pong", 4),
	      "slave to master");
	finish();
}
