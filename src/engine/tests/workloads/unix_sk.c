/* Unix socket workloads for ferry's dump/restore tests, zdtm style:
 *   unix_sk MODE DIR
 * prepares the sockets of MODE, writes DIR/ready, waits for SIGUSR1 (sent after the
 * dump/restore cycles), checks everything from the inside and writes DIR/result:
 * "PASS" or "FAIL: what". Socket files it binds live in DIR.
 *
 * Modes: pair (socketpairs of the three types in one task, data both ways, a dup'ed end),
 * tree (socketpairs with their ends in parent and child), named (path and abstract listeners,
 * an accepted connection with data, a connection pending in the accept queue, a datagram server
 * with a connected client and an unconnected sender), unlinked (bound names removed from the
 * file system), shutdown (SHUT_WR, SHUT_RD, a peer that closed), ext (stream and datagram
 * sockets connected to sockets of the test, outside the tree), pending-data (a connection not
 * accepted yet that already carries data), blocked (a child blocked in recv and accept while
 * dumped), oob (an out-of-band byte). Files in flight (SCM_RIGHTS): unix_scm.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* a result that cannot be written: 99, not 3 */
#define WL_PUT_EXIT 99
#include "workload.h"

static void send_s(int fd, const char *s)
{
	size_t n = strlen(s);
	REQUIRE(send(fd, s, n, MSG_NOSIGNAL) == (ssize_t)n, "send %s on fd %d", s, fd);
}

/* Receives exactly `want` (stream: exactly its bytes; datagram: one message equal to it). */
static void expect(int fd, const char *want, int stream)
{
	char b[256];
	size_t n = strlen(want), got = 0;
	do {
		ssize_t r = recv(fd, b + got, stream ? n - got : sizeof(b), MSG_DONTWAIT);
		REQUIRE(r > 0 || (r == 0 && n == 0), "recv on fd %d wanting \"%s\" got %zd", fd, want, r);
		got += r;
	} while (stream && got < n);
	REQUIRE(got == n && memcmp(b, want, n) == 0, "fd %d: wanted \"%s\", got \"%.*s\"", fd,
	      want, (int)got, b);
}

static void wait_in(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	REQUIRE(poll(&p, 1, 10000) == 1, "nothing arrives on fd %d", fd);
}

static const int types[3] = { SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET };
static const char *tname[3] = { "stream", "dgram", "seqpacket" };

static void msg(char *b, const char *who, int t, int i)
{
	sprintf(b, "%s-%s-%d;", who, tname[t], i);
}

static void fill(int a, int b, int t)
{
	char m[64];
	for (int i = 0; i < 3; i++) {
		msg(m, "ab", t, i);
		send_s(a, m);
	}
	for (int i = 0; i < 2; i++) {
		msg(m, "ba", t, i);
		send_s(b, m);
	}
}

/* What fill() queued, received in order, then a fresh exchange both ways. */
static void drain_opt(int a, int b, int t, int check_empty)
{
	char m[64];
	int st = types[t] == SOCK_STREAM;
	if (b >= 0)
		for (int i = 0; i < 3; i++) {
			msg(m, "ab", t, i);
			expect(b, m, st);
		}
	if (a >= 0)
		for (int i = 0; i < 2; i++) {
			msg(m, "ba", t, i);
			expect(a, m, st);
		}
	if (a >= 0 && check_empty)
		expect_empty(a);
	if (b >= 0 && check_empty)
		expect_empty(b);
}

static void drain(int a, int b, int t)
{
	drain_opt(a, b, t, 1);
}

static int same_file(int x, int y)
{
	struct stat a, b;
	return fstat(x, &a) == 0 && fstat(y, &b) == 0 && a.st_ino == b.st_ino;
}

static void mode_pair(void)
{
	int sv[3][2];
	for (int t = 0; t < 3; t++) {
		REQUIRE(socketpair(AF_UNIX, types[t], 0, sv[t]) == 0, "socketpair %s", tname[t]);
		fill(sv[t][0], sv[t][1], t);
	}
	int dupd = dup(sv[0][0]);
	/* a big stream queue, options and a non-blocking end */
	int big[2];
	static char pat[100000], got[100000];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, big) == 0, "socketpair big");
	for (size_t i = 0; i < sizeof(pat); i++)
		pat[i] = (char)(i * 7 % 251);
	int sz = 300000, one = 1;
	struct timeval tv = { .tv_sec = 7, .tv_usec = 5000 };
	REQUIRE(setsockopt(big[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)) == 0, "SO_SNDBUF");
	REQUIRE(setsockopt(big[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) == 0, "SO_PASSCRED");
	REQUIRE(setsockopt(big[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0, "SO_RCVTIMEO");
	REQUIRE(fcntl(big[0], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
	size_t off = 0;
	while (off < sizeof(pat)) {
		ssize_t r = send(big[0], pat + off, sizeof(pat) - off, 0);
		REQUIRE(r > 0, "fill the big queue at %zu", off);
		off += r;
	}
	int sndbuf_before;
	socklen_t ol = sizeof(int);
	getsockopt(big[0], SOL_SOCKET, SO_SNDBUF, &sndbuf_before, &ol);
	struct timeval tv_before; /* the kernel rounds to jiffies */
	ol = sizeof(tv_before);
	getsockopt(big[1], SOL_SOCKET, SO_RCVTIMEO, &tv_before, &ol);
	put("ready", "ready");
	wait_go();
	int v;
	struct timeval tv2;
	ol = sizeof(v);
	REQUIRE(getsockopt(big[0], SOL_SOCKET, SO_SNDBUF, &v, &ol) == 0 && v == sndbuf_before,
	      "SO_SNDBUF %d, was %d", v, sndbuf_before);
	ol = sizeof(v);
	REQUIRE(getsockopt(big[1], SOL_SOCKET, SO_PASSCRED, &v, &ol) == 0 && v == 1, "SO_PASSCRED lost");
	ol = sizeof(tv2);
	REQUIRE(getsockopt(big[1], SOL_SOCKET, SO_RCVTIMEO, &tv2, &ol) == 0 && tv2.tv_sec == 7 &&
	      tv2.tv_usec == tv_before.tv_usec, "SO_RCVTIMEO lost");
	REQUIRE(fcntl(big[0], F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	REQUIRE(!(fcntl(big[1], F_GETFL) & O_NONBLOCK), "O_NONBLOCK appeared");
	off = 0;
	while (off < sizeof(got)) {
		ssize_t r = recv(big[1], got + off, sizeof(got) - off, MSG_DONTWAIT);
		REQUIRE(r > 0, "big queue ends at %zu", off);
		off += r;
	}
	REQUIRE(memcmp(pat, got, sizeof(pat)) == 0, "big queue differs");
	expect_empty(big[1]);
	for (int t = 0; t < 3; t++) {
		drain(sv[t][0], sv[t][1], t);
		send_s(sv[t][0], "again");
		expect(sv[t][1], "again", 0);
		send_s(sv[t][1], "back");
		expect(sv[t][0], "back", 0);
	}
	/* One description: the dup shares file status flags with its original. */
	REQUIRE(same_file(dupd, sv[0][0]), "dup'ed end is another socket");
	fcntl(dupd, F_SETFL, O_NONBLOCK);
	REQUIRE(fcntl(sv[0][0], F_GETFL) & O_NONBLOCK, "dup'ed end is another description");
	send_s(dupd, "via-dup");
	expect(sv[0][1], "via-dup", 1);
}

static void mode_tree(void)
{
	int sv[3][2];
	for (int t = 0; t < 3; t++)
		REQUIRE(socketpair(AF_UNIX, types[t], 0, sv[t]) == 0, "socketpair %s", tname[t]);
	int sh[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, sh) == 0, "socketpair shared");
	pid_t c = fork();
	REQUIRE(c >= 0, "fork");
	if (c == 0) {
		result_name = "child-result";
		close(sh[1]);
		for (int t = 0; t < 3; t++) {
			close(sv[t][0]);
			char m[64];
			for (int i = 0; i < 2; i++) {
				msg(m, "ba", t, i);
				send_s(sv[t][1], m);
			}
		}
		put("child-ready", "ready");
		wait_go();
		for (int t = 0; t < 3; t++) {
			drain(-1, sv[t][1], t);
			send_s(sv[t][1], "child-alive");
			wait_in(sv[t][1]);
			expect(sv[t][1], "parent-alive", 0);
		}
		send_s(sh[0], "shared-from-child");
		_exit(0);
	}
	char p[512];
	snprintf(p, sizeof(p), "%s/child-ready", dir);
	while (access(p, F_OK) != 0)
		usleep(1000);
	for (int t = 0; t < 3; t++) {
		close(sv[t][1]);
		char m[64];
		for (int i = 0; i < 3; i++) {
			msg(m, "ab", t, i);
			send_s(sv[t][0], m);
		}
	}
	put("ready", "ready");
	wait_go();
	kill(c, SIGUSR1);
	for (int t = 0; t < 3; t++) {
		/* nothing extra: the next message is the child's own (it may already be there) */
		drain_opt(sv[t][0], -1, t, 0);
		/* the child speaks once it has checked its end; then the parent answers */
		int fl = fcntl(sv[t][0], F_GETFL);
		fcntl(sv[t][0], F_SETFL, fl & ~O_NONBLOCK);
		char b[64];
		ssize_t r = recv(sv[t][0], b, 11, MSG_WAITALL);
		REQUIRE(r == 11 && memcmp(b, "child-alive", 11) == 0, "%s: child did not answer", tname[t]);
		send_s(sv[t][0], "parent-alive");
	}
	int st;
	REQUIRE(waitpid(c, &st, 0) == c, "waitpid child");
	/* the child's copy and the parent's are one socket: both reach sh[1] */
	send_s(sh[0], "shared-from-parent");
	expect(sh[1], "shared-from-child", 0);
	expect(sh[1], "shared-from-parent", 0);
	if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
		char b[600];
		snprintf(p, sizeof(p), "%s/child-result", dir);
		FILE *f = fopen(p, "r");
		size_t n = f ? fread(b, 1, sizeof(b) - 1, f) : 0;
		b[n] = 0;
		fail("child: %s", b);
	}
}

static socklen_t addr(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (abstract) {
		strcpy(a->sun_path + 1, name);
		return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
	}
	strcpy(a->sun_path, name);
	return offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1;
}

static int bound(int type, const char *name, int abstract)
{
	struct sockaddr_un a;
	socklen_t l = addr(&a, name, abstract);
	int s = socket(AF_UNIX, type, 0);
	REQUIRE(s >= 0 && bind(s, (struct sockaddr *)&a, l) == 0, "bind %s", name);
	return s;
}

static int connected(int type, const char *name, int abstract)
{
	struct sockaddr_un a;
	socklen_t l = addr(&a, name, abstract);
	int s = socket(AF_UNIX, type, 0);
	REQUIRE(s >= 0 && connect(s, (struct sockaddr *)&a, l) == 0, "connect %s", name);
	return s;
}

static void check_name(int s, const char *name, int abstract)
{
	struct sockaddr_un a, b;
	socklen_t l = addr(&a, name, abstract), m = sizeof(b);
	REQUIRE(getsockname(s, (struct sockaddr *)&b, &m) == 0, "getsockname");
	REQUIRE(m == l && memcmp(a.sun_path, b.sun_path, l - offsetof(struct sockaddr_un, sun_path)) == 0,
	      "bound name of fd %d changed (length %u, wanted %u)", s, m, l);
}

/* A listener still takes new connections and its pending one is there. */
static void check_listener(int l, int type, const char *name, int abstract)
{
	int c = connected(type, name, abstract);
	int s = accept(l, NULL, NULL);
	REQUIRE(s >= 0, "accept a new connection on %s", name);
	send_s(c, "new-conn");
	expect(s, "new-conn", type == SOCK_STREAM);
	send_s(s, "new-back");
	expect(c, "new-back", type == SOCK_STREAM);
	close(c);
	close(s);
}

static void mode_named(void)
{
	char path[300], dpath[300], abs_name[64];
	snprintf(path, sizeof(path), "%s/listen.sock", dir);
	snprintf(dpath, sizeof(dpath), "%s/dgram.sock", dir);
	snprintf(abs_name, sizeof(abs_name), "ferry-unix-test-%d", getpid());
	int l = bound(SOCK_STREAM, path, 0);
	REQUIRE(listen(l, 8) == 0, "listen");
	int la = bound(SOCK_SEQPACKET, abs_name, 1);
	REQUIRE(listen(la, 8) == 0, "listen abstract");
	/* an accepted connection with data both ways */
	int c1 = connected(SOCK_STREAM, path, 0);
	int s1 = accept(l, NULL, NULL);
	REQUIRE(s1 >= 0, "accept");
	send_s(c1, "to-server;");
	send_s(s1, "to-client;");
	/* a connection nobody accepted yet, on each listener */
	int c2 = connected(SOCK_STREAM, path, 0);
	int c3 = connected(SOCK_SEQPACKET, abs_name, 1);
	/* a datagram server, a connected client and an unconnected sender */
	int ds = bound(SOCK_DGRAM, dpath, 0);
	int dc = connected(SOCK_DGRAM, dpath, 0);
	send_s(dc, "dgram-1");
	send_s(dc, "dgram-2");
	int du = socket(AF_UNIX, SOCK_DGRAM, 0);
	struct sockaddr_un a;
	socklen_t al = addr(&a, dpath, 0);
	REQUIRE(sendto(du, "dgram-3", 7, 0, (struct sockaddr *)&a, al) == 7, "sendto");
	put("ready", "ready");
	wait_go();
	check_name(l, path, 0);
	check_name(la, abs_name, 1);
	check_name(ds, dpath, 0);
	expect(s1, "to-server;", 1);
	expect(c1, "to-client;", 1);
	send_s(s1, "more");
	expect(c1, "more", 1);
	int s2 = accept(l, NULL, NULL);
	REQUIRE(s2 >= 0, "accept the pending stream connection");
	send_s(c2, "pending-ok");
	expect(s2, "pending-ok", 1);
	int s3 = accept(la, NULL, NULL);
	REQUIRE(s3 >= 0, "accept the pending seqpacket connection");
	send_s(s3, "seq-ok");
	expect(c3, "seq-ok", 0);
	check_listener(l, SOCK_STREAM, path, 0);
	check_listener(la, SOCK_SEQPACKET, abs_name, 1);
	expect(ds, "dgram-1", 0);
	expect(ds, "dgram-2", 0);
	expect(ds, "dgram-3", 0);
	expect_empty(ds);
	send_s(dc, "dgram-4");
	expect(ds, "dgram-4", 0);
	unlink(path);
	unlink(dpath);
}

static void mode_unlinked(void)
{
	char path[300], dpath[300];
	snprintf(path, sizeof(path), "%s/gone.sock", dir);
	snprintf(dpath, sizeof(dpath), "%s/gone-dgram.sock", dir);
	int l = bound(SOCK_STREAM, path, 0);
	REQUIRE(listen(l, 4) == 0, "listen");
	int c = connected(SOCK_STREAM, path, 0);
	int ds = bound(SOCK_DGRAM, dpath, 0);
	int dc = connected(SOCK_DGRAM, dpath, 0);
	send_s(dc, "queued-before-unlink");
	REQUIRE(unlink(path) == 0 && unlink(dpath) == 0, "unlink");
	put("ready", "ready");
	wait_go();
	struct stat st;
	REQUIRE(stat(path, &st) != 0 && stat(dpath, &st) != 0, "an unlinked name came back");
	check_name(l, path, 0);
	check_name(ds, dpath, 0);
	int s = accept(l, NULL, NULL);
	REQUIRE(s >= 0, "accept through an unlinked name");
	send_s(c, "still-here");
	expect(s, "still-here", 1);
	expect(ds, "queued-before-unlink", 0);
	send_s(dc, "after");
	expect(ds, "after", 0);
}

static void mode_shutdown(void)
{
	int a[2], b[2], c[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0, "socketpair");
	REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, b) == 0, "socketpair");
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, c) == 0, "socketpair");
	send_s(a[0], "bye");
	REQUIRE(shutdown(a[0], SHUT_WR) == 0, "shutdown wr");
	REQUIRE(shutdown(b[1], SHUT_RD) == 0, "shutdown rd");
	send_s(c[1], "last words");
	close(c[1]);
	put("ready", "ready");
	wait_go();
	char x[16];
	expect(a[1], "bye", 1);
	REQUIRE(recv(a[1], x, sizeof(x), MSG_DONTWAIT) == 0, "no EOF after SHUT_WR");
	errno = 0;
	REQUIRE(send(a[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "send after SHUT_WR works");
	send_s(a[1], "back");
	expect(a[0], "back", 1);
	REQUIRE(recv(b[1], x, sizeof(x), MSG_DONTWAIT) == 0, "no EOF after SHUT_RD");
	errno = 0;
	REQUIRE(send(b[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "send to a SHUT_RD peer works");
	send_s(b[1], "seq");
	expect(b[0], "seq", 0);
	expect(c[0], "last words", 1);
	REQUIRE(recv(c[0], x, sizeof(x), MSG_DONTWAIT) == 0, "no EOF from a closed peer");
	errno = 0;
	REQUIRE(send(c[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "send to a closed peer works");
}

static void mode_ext(int dgram)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/%s", dir, dgram ? "ext-dgram.sock" : "ext-stream.sock");
	int s = connected(dgram ? SOCK_DGRAM : SOCK_STREAM, path, 0);
	put("ready", "ready");
	wait_go();
	send_s(s, "from-inside");
}

/* A server blocked in accept(2) and one blocked in recv(2) while dumped. */
static void mode_blocked(void)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/blocked.sock", dir);
	int l = bound(SOCK_STREAM, path, 0);
	REQUIRE(listen(l, 4) == 0, "listen");
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
	pid_t c = fork();
	REQUIRE(c >= 0, "fork");
	if (c == 0) {
		result_name = "child-result";
		close(sv[0]);
		char b[16];
		ssize_t r = recv(sv[1], b, sizeof(b), 0); /* blocked here during the dumps */
		REQUIRE(r == 4 && memcmp(b, "wake", 4) == 0, "blocked recv got %zd", r);
		int s = accept(l, NULL, NULL); /* and here, until the parent connects */
		REQUIRE(s >= 0, "accept");
		r = recv(s, b, sizeof(b), 0);
		REQUIRE(r == 5 && memcmp(b, "hello", 5) == 0, "recv on accepted socket got %zd", r);
		send_s(s, "awake");
		_exit(0);
	}
	close(sv[1]);
	usleep(100000); /* let the child block */
	put("ready", "ready");
	wait_go();
	send_s(sv[0], "wake");
	int k = connected(SOCK_STREAM, path, 0);
	send_s(k, "hello");
	wait_in(k);
	expect(k, "awake", 1);
	int st;
	REQUIRE(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed");
	unlink(path);
}

static void mode_oob(void)
{
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	send_s(sv[0], "abc");
	REQUIRE(send(sv[0], "X", 1, MSG_OOB) == 1, "send MSG_OOB");
	put("ready", "ready");
	wait_go();
	char b[4];
	REQUIRE(recv(sv[1], b, 1, MSG_OOB | MSG_DONTWAIT) == 1 && b[0] == 'X', "out-of-band byte lost");
	expect(sv[1], "abc", 1);
}

static void mode_pending_data(void)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/early.sock", dir);
	int l = bound(SOCK_STREAM, path, 0);
	REQUIRE(listen(l, 4) == 0, "listen");
	int c = connected(SOCK_STREAM, path, 0);
	send_s(c, "early");
	put("ready", "ready");
	wait_go();
	int s = accept(l, NULL, NULL);
	REQUIRE(s >= 0, "accept");
	expect(s, "early", 1);
	unlink(path);
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	wl_start(argv[2]);
	const char *m = argv[1];
	if (!strcmp(m, "pair"))
		mode_pair();
	else if (!strcmp(m, "tree"))
		mode_tree();
	else if (!strcmp(m, "named"))
		mode_named();
	else if (!strcmp(m, "unlinked"))
		mode_unlinked();
	else if (!strcmp(m, "shutdown"))
		mode_shutdown();
	else if (!strcmp(m, "ext-stream"))
		mode_ext(0);
	else if (!strcmp(m, "ext-dgram"))
		mode_ext(1);
	else if (!strcmp(m, "blocked"))
		mode_blocked();
	else if (!strcmp(m, "oob"))
		mode_oob();
	else if (!strcmp(m, "pending-data"))
		mode_pending_data();
	else
		return 2;
	put("result", "PASS");
	return 0;
}
