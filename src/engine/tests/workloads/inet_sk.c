/* Inet sockets for ferry's dump/restore tests (zdtm style): prepare, write DIR/ready, wait for
 * SIGUSR1, verify from the inside, write DIR/result ("PASS" or what failed), exit.
 *
 *   inet_sk MODE DIR
 *   listen   a TCP listener on 127.0.0.1:5000 (SO_REUSEADDR): after restore it still has its
 *            address and accepts a new connection that carries data both ways
 *   stream4  a TCP client/server pair over 127.0.0.1 in one process, with unread data queued
 *            in both directions (beyond the receiver's window, so part stays in the sender's
 *            send queue): after restore every byte arrives in order, then more data both ways
 *   stream6  the same over ::1
 *   tree     the same over 127.0.0.1, client in a child process, server in the parent
 *   udp      a bound UDP socket and a connected one: addresses kept, datagrams both ways
 *   refuse   an established connection, for dumps without --tcp-established: the tree must
 *            keep working
 *   rollback the same plus a raw socket opened last: a dump with --tcp-established puts the
 *            connection in repair mode, then fails on the raw socket; the connection must
 *            work on after the rollback
 * The test runs it in a network namespace of its own, so fixed ports never clash.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

/* Byte i of the stream in direction d: never the same sequence twice. */
static unsigned char pat(int d, size_t i) { return (unsigned char)(i * (d ? 7 : 13) + i / 251 + d * 101); }

static void timeouts(int fd)
{
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Writes the pattern of direction d from stream offset `from` without blocking until the
 * kernel takes no more or `max` bytes are in; returns how many. */
static size_t fill(int fd, int d, size_t from, size_t max)
{
	unsigned char buf[4096];
	size_t off = 0;
	while (off < max) {
		size_t n = sizeof buf;
		if (n > max - off)
			n = max - off;
		for (size_t i = 0; i < n; i++)
			buf[i] = pat(d, from + off + i);
		ssize_t w = send(fd, buf, n, MSG_DONTWAIT);
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (w <= 0)
			fail("fill send");
		off += w;
	}
	return off;
}

/* Reads exactly n bytes of direction d starting at stream offset `from`, checking each. */
static void expect(int fd, int d, size_t from, size_t n, const char *what)
{
	unsigned char buf[8192];
	size_t got = 0;
	while (got < n) {
		size_t want = n - got < sizeof buf ? n - got : sizeof buf;
		ssize_t r = recv(fd, buf, want, 0);
		if (r <= 0)
			fail("%s: read %zu of %zu bytes, then %zd", what, got, n, r);
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != pat(d, from + got + i))
				fail("%s: byte %zu differs", what, from + got + i);
		got += r;
	}
}

static void send_all(int fd, int d, size_t from, size_t n, const char *what)
{
	unsigned char buf[8192];
	size_t off = 0;
	while (off < n) {
		size_t k = n - off < sizeof buf ? n - off : sizeof buf;
		for (size_t i = 0; i < k; i++)
			buf[i] = pat(d, from + off + i);
		ssize_t w = send(fd, buf, k, MSG_NOSIGNAL);
		if (w <= 0)
			fail("%s: send", what);
		off += w;
	}
}

static int v6;

static socklen_t addr(struct sockaddr_storage *ss, int port)
{
	memset(ss, 0, sizeof *ss);
	if (v6) {
		struct sockaddr_in6 *a = (void *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		a->sin6_addr = in6addr_loopback;
		return sizeof *a;
	}
	struct sockaddr_in *a = (void *)ss;
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sizeof *a;
}

static int listener(int port)
{
	struct sockaddr_storage ss;
	socklen_t len = addr(&ss, port);
	int one = 1;
	int l = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one))
		fail("listener socket");
	if (bind(l, (void *)&ss, len) || listen(l, 8))
		fail("listener bind/listen");
	return l;
}

static int connect_to(int port)
{
	struct sockaddr_storage ss;
	socklen_t len = addr(&ss, port);
	int c = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (void *)&ss, len))
		fail("connect to %d", port);
	timeouts(c);
	return c;
}

static int port_of(int fd, int peer)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	if ((peer ? getpeername : getsockname)(fd, (void *)&ss, &len))
		fail("get%sname", peer ? "peer" : "sock");
	return ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
					: ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* A new connection to the listener, data both ways. */
static void check_accepts(int l, int port)
{
	int c = connect_to(port);
	int s = accept(l, NULL, NULL);
	if (s < 0)
		fail("accept after restore");
	timeouts(s);
	send_all(c, 0, 0, 5000, "new client");
	expect(s, 0, 0, 5000, "new server side");
	send_all(s, 1, 0, 5000, "new server");
	expect(c, 1, 0, 5000, "new client side");
	close(c);
	close(s);
}

#define QUEUED (2u << 20)

static void stream(void)
{
	int l = listener(5001);
	int c = connect_to(5001);
	int s = accept(l, NULL, NULL);
	if (s < 0)
		fail("accept");
	timeouts(s);
	int cport = port_of(c, 0);
	/* Some data read already, then more than the receiver's window left unread. */
	send_all(c, 0, 0, 1000, "first client bytes");
	expect(s, 0, 0, 1000, "first client bytes");
	size_t c2s = 1000 + fill(c, 0, 1000, QUEUED);
	size_t s2c = fill(s, 1, 0, QUEUED / 2);
	if (c2s < 100000 || s2c < 100000)
		fail("queued only %zu and %zu bytes", c2s, s2c);
	ready_wait("1");
	if (port_of(c, 0) != cport || port_of(c, 1) != 5001 || port_of(s, 0) != 5001 ||
	    port_of(s, 1) != cport)
		fail("addresses changed");
	expect(s, 0, 1000, c2s - 1000, "client->server queued stream");
	expect(c, 1, 0, s2c, "server->client queued stream");
	send_all(c, 0, c2s, 300000, "client after restore");
	expect(s, 0, c2s, 300000, "client->server after restore");
	send_all(s, 1, s2c, 300000, "server after restore");
	expect(c, 1, s2c, 300000, "server->client after restore");
	check_accepts(l, 5001);
	put("result", "PASS");
}

static void tree(void)
{
	int l = listener(5002);
	int up[2], down[2]; /* child -> parent, parent -> child */
	if (pipe(up) || pipe(down))
		fail("pipe");
	pid_t kid = fork();
	if (kid < 0)
		fail("fork");
	if (kid == 0) {
		/* The client: queue data, wait for the parent's word (a byte on the pipe),
		 * then check its half. */
		close(l);
		int c = connect_to(5002);
		size_t c2s = fill(c, 0, 0, QUEUED / 2);
		char b;
		if (write(up[1], &c2s, sizeof c2s) != sizeof c2s || read(down[0], &b, 1) != 1)
			_exit(2);
		/* The server queued 200000 bytes for us before ready. */
		unsigned char buf[8192];
		size_t got = 0;
		while (got < 200000) {
			ssize_t r = recv(c, buf, sizeof buf, 0);
			if (r <= 0)
				_exit(4);
			for (ssize_t i = 0; i < r; i++)
				if (buf[i] != pat(1, got + i))
					_exit(5);
			got += r;
		}
		send_all(c, 0, c2s, 1000, "child after restore");
		_exit(0);
	}
	int s = accept(l, NULL, NULL);
	if (s < 0)
		fail("accept");
	timeouts(s);
	size_t c2s;
	if (read(up[0], &c2s, sizeof c2s) != sizeof c2s)
		fail("child's count");
	size_t s2c = fill(s, 1, 0, 200000);
	if (s2c != 200000)
		fail("server queued only %zu", s2c);
	ready_wait("1");
	if (write(down[1], "g", 1) != 1)
		fail("go to child");
	expect(s, 0, 0, c2s + 1000, "child->parent stream");
	int st;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("child failed: status %d", st);
	put("result", "PASS");
}

static void listen_mode(void)
{
	int l = listener(5000);
	ready_wait("1");
	if (port_of(l, 0) != 5000)
		fail("listener port changed");
	int one = 0;
	socklen_t len = sizeof one;
	if (getsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, &len) || !one)
		fail("SO_REUSEADDR lost");
	check_accepts(l, 5000);
	check_accepts(l, 5000);
	put("result", "PASS");
}

static int udp(int port, int peer)
{
	struct sockaddr_storage ss;
	int u = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
	socklen_t len = addr(&ss, port);
	if (u < 0 || bind(u, (void *)&ss, len))
		fail("udp bind %d", port);
	if (peer) {
		len = addr(&ss, peer);
		if (connect(u, (void *)&ss, len))
			fail("udp connect");
	}
	timeouts(u);
	return u;
}

static void udp_mode(void)
{
	int b = udp(6000, 0), c = udp(6001, 6000);
	ready_wait("1");
	if (port_of(b, 0) != 6000 || port_of(c, 0) != 6001 || port_of(c, 1) != 6000)
		fail("udp addresses changed");
	for (int i = 0; i < 3; i++) {
		char msg[64], got[64];
		int n = snprintf(msg, sizeof msg, "datagram %d", i);
		if (send(c, msg, n, 0) != n)
			fail("udp send");
		struct sockaddr_storage from;
		socklen_t fl = sizeof from;
		ssize_t r = recvfrom(b, got, sizeof got, 0, (void *)&from, &fl);
		if (r != n || memcmp(got, msg, n))
			fail("udp datagram %d", i);
		if (ntohs(((struct sockaddr_in *)&from)->sin_port) != 6001)
			fail("udp source port");
		if (sendto(b, msg, n, 0, (void *)&from, fl) != n)
			fail("udp reply");
		r = recv(c, got, sizeof got, 0);
		if (r != n || memcmp(got, msg, n))
			fail("udp reply %d", i);
	}
	put("result", "PASS");
}

static void refuse(int raw)
{
	int l = listener(5003);
	int c = connect_to(5003);
	int s = accept(l, NULL, NULL);
	if (s < 0)
		fail("accept");
	timeouts(s);
	send_all(c, 0, 0, 3000, "before");
	/* opened last: a higher fd than the connection's, which is dumped first */
	if (raw && socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) < 0)
		fail("raw socket");
	ready_wait("1");
	expect(s, 0, 0, 3000, "queued before the refused dump");
	send_all(s, 1, 0, 3000, "reply");
	expect(c, 1, 0, 3000, "reply");
	put("result", "PASS");
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	wl_start(argv[2]);
	signal(SIGPIPE, SIG_IGN);
	const char *m = argv[1];
	if (!strcmp(m, "listen"))
		listen_mode();
	else if (!strcmp(m, "stream4"))
		stream();
	else if (!strcmp(m, "stream6"))
		v6 = 1, stream();
	else if (!strcmp(m, "tree"))
		tree();
	else if (!strcmp(m, "udp"))
		udp_mode();
	else if (!strcmp(m, "udp6"))
		v6 = 1, udp_mode();
	else if (!strcmp(m, "refuse"))
		refuse(0);
	else if (!strcmp(m, "rollback"))
		refuse(1);
	else
		return 2;
	return 0;
}
