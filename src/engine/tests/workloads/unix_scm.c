/* Files in flight (SCM_RIGHTS) for ferry's dump/restore tests, zdtm style:
 *   unix_scm MODE DIR
 * prepares its queues, writes DIR/ready, waits for SIGUSR1 (sent after the dump/restore
 * cycles), receives everything from the inside and writes DIR/result: "PASS" or "FAIL: what".
 *
 * Modes:
 *   inflight  a datagram and a stream socketpair whose queues carry a pipe read end with data
 *             behind it (its write end stays with the task), a regular file at an offset that
 *             the task also holds (one description), another one only in flight, one end of
 *             another socketpair (whose own queue holds data and an eventfd), the pipe twice,
 *             a listening socket bound to DIR/l.sock with a connection pending from the task,
 *             an unlinked regular file, a memfd, DIR/only.txt at offset 2.
 *   loop      a socket whose own queue carries it (refused).
 *   loop2     two sockets, each in flight in the other's queue (refused).
 *   epoll     an epoll instance only in flight (refused).
 *   creds     a receiver with SO_PASSCRED and a message sent as another uid (refused).
 *   many      more fds in flight than ferry takes (refused).
 *   inet      a TCP socket in flight (refused). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <unistd.h>

/* a result that cannot be written: 99, not 3 */
#define WL_PUT_EXIT 99
#include "workload.h"

#define KCMP_FILE 0

static int same_file(int a, int b)
{
	pid_t p = getpid();
	return syscall(SYS_kcmp, p, p, KCMP_FILE, a, b) == 0;
}

/* Sends `s` with `n` fds. */
static void send_fds(int sk, const char *s, const int *fds, int n)
{
	char cbuf[CMSG_SPACE(253 * sizeof(int))];
	struct iovec io = { .iov_base = (void *)s, .iov_len = strlen(s) };
	struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1 };
	if (n) {
		memset(cbuf, 0, sizeof(cbuf));
		m.msg_control = cbuf;
		m.msg_controllen = CMSG_SPACE(n * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(c), fds, n * sizeof(int));
	}
	REQUIRE(sendmsg(sk, &m, MSG_NOSIGNAL) == (ssize_t)strlen(s), "sendmsg \"%s\" with %d fds", s, n);
}

/* Receives one message (or stream chunk): its text must be `want`, it must carry `n` fds,
 * which land in `fds`. */
static void recv_fds(int sk, const char *want, int *fds, int n)
{
	char b[256], cbuf[CMSG_SPACE(253 * sizeof(int))];
	struct iovec io = { .iov_base = b, .iov_len = sizeof(b) - 1 };
	struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf) };
	ssize_t r = recvmsg(sk, &m, MSG_DONTWAIT);
	REQUIRE(r >= 0, "recvmsg on fd %d wanting \"%s\"", sk, want);
	b[r] = 0;
	REQUIRE(strcmp(b, want) == 0, "fd %d: wanted \"%s\", got \"%s\"", sk, want, b);
	REQUIRE(!(m.msg_flags & MSG_CTRUNC), "control data truncated on \"%s\"", want);
	int got = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		REQUIRE(got + k <= n, "\"%s\" carries more than %d fds", want, n);
		memcpy(fds + got, CMSG_DATA(c), k * sizeof(int));
		got += k;
	}
	REQUIRE(got == n, "\"%s\" carries %d fds, wanted %d", want, got, n);
}

static void expect_read(int fd, const char *want)
{
	char b[64];
	size_t n = strlen(want);
	ssize_t r = read(fd, b, n);
	REQUIRE(r == (ssize_t)n && memcmp(b, want, n) == 0, "fd %d: wanted \"%s\", read %zd \"%.*s\"",
	      fd, want, r, (int)(r > 0 ? r : 0), b);
}

static void mode_inflight(void)
{
	int cd[2], cs[2], o[2], p[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, cd) == 0, "socketpair dgram");
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, cs) == 0, "socketpair stream");
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, o) == 0, "socketpair other");
	REQUIRE(pipe(p) == 0, "pipe");
	REQUIRE(write(p[1], "pipe-data-1", 11) == 11, "fill the pipe");

	char path[512];
	snprintf(path, sizeof(path), "%s/reg.txt", dir);
	int w = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	REQUIRE(w >= 0 && write(w, "0123456789abcdef", 16) == 16, "write %s", path);
	close(w);
	int rf = open(path, O_RDWR);	/* held by the task and in flight: one description */
	int rf2 = open(path, O_RDONLY); /* only in flight */
	REQUIRE(rf >= 0 && rf2 >= 0, "open %s", path);
	REQUIRE(lseek(rf, 5, SEEK_SET) == 5 && lseek(rf2, 7, SEEK_SET) == 7, "lseek");

	/* The other socketpair's end in flight has a queue of its own, with a file in it. */
	int efd = eventfd(7, 0);
	REQUIRE(efd >= 0, "eventfd");
	REQUIRE(send(o[1], "to-o0", 5, 0) == 5, "send to-o0");
	send_fds(o[1], "efd", &efd, 1);
	close(efd);

	/* A listener only in flight, with a connection from the task waiting in its queue. */
	struct sockaddr_un la = { .sun_family = AF_UNIX };
	snprintf(la.sun_path, sizeof(la.sun_path), "%s/l.sock", dir);
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	REQUIRE(l >= 0 && bind(l, (struct sockaddr *)&la, sizeof(la)) == 0 && listen(l, 4) == 0,
	      "listen on %s", la.sun_path);
	int cl = socket(AF_UNIX, SOCK_STREAM, 0);
	REQUIRE(cl >= 0 && connect(cl, (struct sockaddr *)&la, sizeof(la)) == 0, "connect");

	/* An unlinked file and a memfd, only in flight. */
	char gpath[512];
	snprintf(gpath, sizeof(gpath), "%s/gone.txt", dir);
	int g = open(gpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
	REQUIRE(g >= 0 && write(g, "ghost!", 6) == 6 && unlink(gpath) == 0, "unlinked file");
	int mfd = memfd_create("scm", 0);
	REQUIRE(mfd >= 0 && write(mfd, "memfd!", 6) == 6, "memfd");
	char opath[512];
	snprintf(opath, sizeof(opath), "%s/only.txt", dir);
	w = open(opath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	REQUIRE(w >= 0 && write(w, "only", 4) == 4, "write %s", opath);
	close(w);
	int only = open(opath, O_RDONLY);
	REQUIRE(only >= 0 && lseek(only, 2, SEEK_SET) == 2, "open %s", opath);
	int anon[3] = { g, mfd, only };

	int files[3] = { p[0], rf, rf2 };
	send_fds(cd[0], "files", files, 3);
	send_fds(cd[0], "plain", NULL, 0);
	send_fds(cd[0], "sock", &o[0], 1);
	send_fds(cd[0], "listener", &l, 1);
	close(l);
	send_fds(cd[0], "anon", anon, 3);
	close(g);
	close(mfd);
	close(only);
	send_fds(cs[0], "abc", NULL, 0);
	send_fds(cs[0], "def", &p[0], 1);
	send_fds(cs[0], "ghi", NULL, 0);
	close(p[0]);
	close(rf2);
	close(o[0]);
	put("ready", "ready");
	wait_go();

	int got[3];
	recv_fds(cd[1], "files", got, 3);
	int rp = got[0], rr = got[1], rr2 = got[2];
	/* The pipe: its data, then what the writer (this task's p[1]) writes now. */
	expect_read(rp, "pipe-data-1");
	REQUIRE(write(p[1], "more", 4) == 4, "write into the pipe");
	expect_read(rp, "more");
	/* The regular file held by the task too: one description, offset 5. */
	REQUIRE(lseek(rr, 0, SEEK_CUR) == 5, "received file at offset %ld, not 5",
	      (long)lseek(rr, 0, SEEK_CUR));
	REQUIRE(same_file(rr, rf), "the file in flight is no longer the task's description");
	REQUIRE(lseek(rf, 9, SEEK_SET) == 9, "lseek rf");
	expect_read(rr, "9ab");
	REQUIRE(lseek(rf, 0, SEEK_CUR) == 12, "offsets not shared");
	REQUIRE((fcntl(rr, F_GETFL) & O_ACCMODE) == O_RDWR, "flags of the file in flight");
	/* The one only in flight: offset 7, read-only. */
	REQUIRE(lseek(rr2, 0, SEEK_CUR) == 7, "second file at offset %ld, not 7",
	      (long)lseek(rr2, 0, SEEK_CUR));
	REQUIRE(!same_file(rr2, rf), "two descriptions became one");
	expect_read(rr2, "789");
	REQUIRE((fcntl(rr2, F_GETFL) & O_ACCMODE) == O_RDONLY, "flags of the second file");

	recv_fds(cd[1], "plain", NULL, 0);

	int ro;
	recv_fds(cd[1], "sock", &ro, 1);
	char b[16];
	REQUIRE(recv(ro, b, 5, MSG_DONTWAIT) == 5 && memcmp(b, "to-o0", 5) == 0,
	      "the queue of the socket in flight");
	int re;
	recv_fds(ro, "efd", &re, 1);
	uint64_t v = 0;
	REQUIRE(read(re, &v, 8) == 8 && v == 7, "eventfd in flight in flight: %lu", (unsigned long)v);
	REQUIRE(send(ro, "ping", 4, 0) == 4, "send on the socket from flight");
	REQUIRE(recv(o[1], b, 4, MSG_DONTWAIT) == 4 && memcmp(b, "ping", 4) == 0,
	      "its peer does not get what it sends");
	REQUIRE(send(o[1], "pong", 4, 0) == 4, "send to it");
	REQUIRE(recv(ro, b, 4, MSG_DONTWAIT) == 4 && memcmp(b, "pong", 4) == 0,
	      "it does not get what its peer sends");

	int rl;
	recv_fds(cd[1], "listener", &rl, 1);
	int ra[3];
	recv_fds(cd[1], "anon", ra, 3);
	expect_read(ra[2], "ly");
	struct stat st;
	REQUIRE(fstat(ra[0], &st) == 0 && st.st_nlink == 0, "the unlinked file in flight got a name");
	REQUIRE(lseek(ra[0], 0, SEEK_CUR) == 6, "unlinked file offset");
	REQUIRE(pread(ra[0], b, 6, 0) == 6 && memcmp(b, "ghost!", 6) == 0, "unlinked file content");
	REQUIRE(lseek(ra[1], 0, SEEK_CUR) == 6, "memfd offset");
	REQUIRE(pread(ra[1], b, 6, 0) == 6 && memcmp(b, "memfd!", 6) == 0, "memfd content");
	int acc = accept(rl, NULL, NULL);
	REQUIRE(acc >= 0, "accept the pending connection on the listener from flight");
	REQUIRE(send(cl, "hi", 2, 0) == 2 && recv(acc, b, 2, 0) == 2 && memcmp(b, "hi", 2) == 0,
	      "the pending connection");
	int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
	REQUIRE(c2 >= 0 && connect(c2, (struct sockaddr *)&la, sizeof(la)) == 0,
	      "connect to the listener from flight by its name");
	int a2 = accept(rl, NULL, NULL);
	REQUIRE(a2 >= 0 && send(c2, "yo", 2, 0) == 2 && recv(a2, b, 2, 0) == 2, "new connection");

	/* The stream: bytes up to the message with the file come with it, then the rest. */
	int rp2;
	recv_fds(cs[1], "abcdef", &rp2, 1);
	REQUIRE(same_file(rp2, rp), "the pipe passed twice is two descriptions now");
	recv_fds(cs[1], "ghi", NULL, 0);

	expect_empty(cd[1]);
	expect_empty(cs[1]);
	expect_empty(ro);
	expect_empty(o[1]);
}

static void mode_loop(void)
{
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair");
	send_fds(sv[0], "self", &sv[1], 1);
	put("ready", "ready");
	wait_go();
	int r;
	recv_fds(sv[1], "self", &r, 1);
	REQUIRE(same_file(r, sv[1]), "the socket that came back is another one");
}

static void mode_loop2(void)
{
	int x[2], y[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, x) == 0, "socketpair x");
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, y) == 0, "socketpair y");
	send_fds(x[0], "y1", &y[1], 1);
	send_fds(y[0], "x1", &x[1], 1);
	put("ready", "ready");
	wait_go();
	int r;
	recv_fds(x[1], "y1", &r, 1);
	REQUIRE(same_file(r, y[1]), "y1 came back as another socket");
	recv_fds(y[1], "x1", &r, 1);
	REQUIRE(same_file(r, x[1]), "x1 came back as another socket");
}

static void mode_epoll(void)
{
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair");
	int ep = epoll_create1(0);
	REQUIRE(ep >= 0, "epoll_create1");
	send_fds(sv[0], "ep", &ep, 1);
	close(ep);
	put("ready", "ready");
	wait_go();
	int r;
	recv_fds(sv[1], "ep", &r, 1);
	struct epoll_event e;
	REQUIRE(epoll_wait(r, &e, 1, 0) == 0, "the epoll instance from flight");
}

static void mode_creds(void)
{
	int sv[2], one = 1;
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair");
	REQUIRE(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) == 0, "SO_PASSCRED");
	struct ucred u = { .pid = getpid(), .uid = 4242, .gid = 4343 };
	char cbuf[CMSG_SPACE(sizeof(u))];
	struct iovec io = { .iov_base = "c", .iov_len = 1 };
	struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_CREDENTIALS;
	c->cmsg_len = CMSG_LEN(sizeof(u));
	memcpy(CMSG_DATA(c), &u, sizeof(u));
	REQUIRE(sendmsg(sv[0], &m, 0) == 1, "sendmsg as uid 4242");
	put("ready", "ready");
	wait_go();
	char b[4];
	struct iovec io2 = { .iov_base = b, .iov_len = sizeof(b) };
	struct msghdr m2 = { .msg_iov = &io2, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	REQUIRE(recvmsg(sv[1], &m2, MSG_DONTWAIT) == 1, "recvmsg");
	struct cmsghdr *r = CMSG_FIRSTHDR(&m2);
	REQUIRE(r && r->cmsg_type == SCM_CREDENTIALS, "no credentials");
	memcpy(&u, CMSG_DATA(r), sizeof(u));
	REQUIRE(u.uid == 4242 && u.gid == 4343, "credentials changed: uid %u gid %u", u.uid, u.gid);
}

#define MANY_MSGS 17

static void mode_many(void)
{
	int sv[2], fds[253];
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair");
	for (int i = 0; i < 253; i++)
		fds[i] = 0;
	for (int i = 0; i < MANY_MSGS; i++)
		send_fds(sv[0], "m", fds, 253);
	put("ready", "ready");
	wait_go();
	for (int i = 0; i < MANY_MSGS; i++) {
		int got[253];
		recv_fds(sv[1], "m", got, 253);
		for (int k = 0; k < 253; k++) {
			REQUIRE(same_file(got[k], 0), "fd %d of message %d", k, i);
			close(got[k]);
		}
	}
	expect_empty(sv[1]);
}

static void mode_inet(void)
{
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair");
	int t = socket(AF_INET, SOCK_STREAM, 0);
	REQUIRE(t >= 0, "socket AF_INET");
	send_fds(sv[0], "tcp", &t, 1);
	close(t);
	put("ready", "ready");
	wait_go();
	int r;
	recv_fds(sv[1], "tcp", &r, 1);
	struct sockaddr_in a;
	socklen_t al = sizeof(a);
	REQUIRE(getsockname(r, (struct sockaddr *)&a, &al) == 0 && a.sin_family == AF_INET,
	      "the TCP socket in flight");
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	wl_start(argv[2]);
	const char *m = argv[1];
	if (!strcmp(m, "inflight"))
		mode_inflight();
	else if (!strcmp(m, "loop"))
		mode_loop();
	else if (!strcmp(m, "loop2"))
		mode_loop2();
	else if (!strcmp(m, "epoll"))
		mode_epoll();
	else if (!strcmp(m, "creds"))
		mode_creds();
	else if (!strcmp(m, "many"))
		mode_many();
	else if (!strcmp(m, "inet"))
		mode_inet();
	else
		return 2;
	put("result", "PASS");
	return 0;
}
