/* files_pty_queued: a pty pair inside the tree with bytes queued in both directions, across
 * checkpoints (zdtm style). argv[1] = a directory, argv[2] = "raw" or "canon".
 *   3  pty master (O_RDWR|O_NOCTTY)     4  its slave (O_RDWR|O_NOCTTY), window 33x99
 * raw:   the slave is non-canonical (no ICANON, no ECHO, VMIN 1) but keeps ICRNL and
 *        OPOST|ONLCR, so bytes translated twice would show: the master wrote "in\r\nabc\r"
 *        (the slave will read "in\n\nabc\n"), the slave wrote "out\nxyz" (the master will
 *        read "out\r\nxyz"); 2000 more bytes each way.
 * canon: the slave is canonical; the master wrote the complete line "line one\n": a dump must
 *        refuse it, and the line must still be there after the failed dump.
 * modes: nothing queued; the master in packet mode (TIOCPKT), the slave exclusive (TIOCEXCL),
 *        the slave canonical with ECHO.
 * Prepare, write DIR/ready, wait for SIGUSR1, verify, write DIR/result, idle until killed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static int queued(int fd)
{
	int n = -1;
	ioctl(fd, FIONREAD, &n);
	return n;
}

/* Reads exactly n bytes (non-blocking fd), waiting a little for them. */
static ssize_t read_n(int fd, char *b, size_t n)
{
	size_t got = 0;
	for (int i = 0; i < 400 && got < n; i++) {
		ssize_t r = read(fd, b + got, n - got);
		if (r > 0)
			got += r;
		else
			nap(5);
	}
	return got;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	wl_start(argv[1]);
	/* fds the test runner leaked to us would collide with the numbers set up below */
	syscall(SYS_close_range, 3, ~0U, 0);
	int raw = strcmp(argv[2], "raw") == 0;
	int modes = strcmp(argv[2], "modes") == 0;
	signal(SIGHUP, SIG_IGN);
	at(posix_openpt(O_RDWR | O_NOCTTY), 3);
	if (grantpt(3) || unlockpt(3))
		return 21;
	at(open(ptsname(3), O_RDWR | O_NOCTTY), 4);
	struct termios t;
	tcgetattr(4, &t);
	t.c_iflag |= ICRNL;
	t.c_oflag |= OPOST | ONLCR;
	t.c_lflag &= ~(ECHO | ECHONL);
	if (raw) {
		t.c_lflag &= ~ICANON;
		t.c_cc[VMIN] = 1;
		t.c_cc[VTIME] = 0;
	} else {
		t.c_lflag |= ICANON;
		if (modes)
			t.c_lflag |= ECHO;
	}
	if (tcsetattr(4, TCSANOW, &t))
		return 22;
	struct winsize ws = { .ws_row = 33, .ws_col = 99 };
	ioctl(3, TIOCSWINSZ, &ws);
	char in[2100], out[2100], big[2000];
	size_t nin, nout;
	for (int i = 0; i < 2000; i++)
		big[i] = 'A' + i % 26;
	if (raw) {
		if (write(3, "in\r\nabc\r", 8) != 8 || write(3, big, 2000) != 2000 ||
		    write(4, "out\nxyz", 7) != 7 || write(4, big, 2000) != 2000)
			return 23;
		memcpy(in, "in\n\nabc\n", 8);
		memcpy(in + 8, big, 2000);
		nin = 2008;
		memcpy(out, "out\r\nxyz", 8);
		memcpy(out + 8, big, 2000);
		nout = 2008;
	} else if (modes) {
		int one = 1;
		if (ioctl(3, TIOCPKT, &one) || ioctl(4, TIOCEXCL))
			return 26;
		nin = nout = 0;
	} else {
		if (write(3, "line one\n", 9) != 9)
			return 24;
		memcpy(in, "line one\n", 9);
		nin = 9;
		nout = 0;
	}
	/* the pty moves bytes from a kernel work item: wait until they are queued */
	for (int i = 0; i < 400 && (queued(4) != (int)nin || queued(3) != (int)nout); i++)
		nap(5);
	if (queued(4) != (int)nin || queued(3) != (int)nout)
		return 25;

	ready_wait("ready\n");

	char b[4200];
	if (modes) {
		int pkt = -1, excl = -1;
		CHECK(ioctl(3, TIOCGPKT, &pkt) == 0 && pkt == 1, "packet mode %d", pkt);
		CHECK(ioctl(4, TIOCGEXCL, &excl) == 0 && excl == 1, "exclusive %d", excl);
		CHECK(tcgetattr(4, &t) == 0 && (t.c_lflag & ICANON) && (t.c_lflag & ECHO), "termios");
		fcntl(3, F_SETFL, O_NONBLOCK);
		fcntl(4, F_SETFL, O_NONBLOCK);
		/* in packet mode every read of the master starts with a status byte (0: data) */
		CHECK(write(4, "pk\n", 3) == 3 && read_n(3, b, 5) == 5 && !memcmp(b, "\0pk\r\n", 5),
		      "packet-mode read");
		/* canonical with echo: the line comes back as echo, the slave reads it whole */
		CHECK(write(3, "ab\r", 3) == 3 && read_n(4, b, 3) == 3 && !memcmp(b, "ab\n", 3), "canonical line");
		finish();
	}
	CHECK(queued(4) == (int)nin, "slave has %d bytes queued, not %zu", queued(4), nin);
	CHECK(queued(3) == (int)nout, "master has %d bytes queued, not %zu", queued(3), nout);
	CHECK(tcgetattr(4, &t) == 0 && !!(t.c_lflag & ICANON) == !raw && !(t.c_lflag & ECHO) &&
		      (t.c_iflag & ICRNL) && (t.c_oflag & ONLCR), "termios");
	CHECK(ioctl(4, TIOCGWINSZ, &ws) == 0 && ws.ws_row == 33 && ws.ws_col == 99, "winsize");
	fcntl(3, F_SETFL, O_NONBLOCK);
	fcntl(4, F_SETFL, O_NONBLOCK);
	memset(b, 0, sizeof b);
	ssize_t r = read_n(4, b, nin);
	CHECK(r == (ssize_t)nin && !memcmp(b, in, nin), "slave read %zd bytes: %.12s", r, b);
	if (nout) {
		memset(b, 0, sizeof b);
		r = read_n(3, b, nout);
		CHECK(r == (ssize_t)nout && !memcmp(b, out, nout), "master read %zd bytes: %.12s", r, b);
	}
	nap(20);
	CHECK(read(4, b, 1) < 0 && read(3, b, 1) < 0, "more bytes than were queued");
	/* and the pair still works both ways */
	CHECK(write(3, "ping\r", 5) == 5 && read_n(4, b, 5) == 5 && !memcmp(b, "ping\n", 5), "master to slave");
	CHECK(write(4, "pong\n", 5) == 5 && read_n(3, b, 6) == 6 && !memcmp(b, "pong\r\n", 6), "slave to master");
	finish();
}
