/*
 * tcp_pair: a TCP server and its client, two processes of one container, on the container's
 * own loopback, with data in flight in both directions across checkpoints.
 *
 * Usage: tcp_pair ROUNDS
 *
 * Brings lo up (needs CAP_NET_ADMIN), listens on 127.0.0.1:7000, forks the client, which
 * connects; the server accepts. Then for each round R: the server sends a pattern to the client
 * and the client one to the server, and neither reads: the bytes wait unread in the receive
 * queues. Each side writes /tcp-ready-R-{server,client} and waits for /tcp-go-R (a test
 * checkpoints and restores the container meanwhile). Then each reads what it was sent and checks
 * every byte, the client connects once more to the listening socket and says "hello R", the
 * server accepts that and checks it, and each writes /tcp-ok-R-SIDE, or /tcp-fail-R-SIDE with
 * the reason (the client starts the next round once the server's ok is there, so that each
 * side can check that nothing beyond the round's bytes arrived). After the last round both
 * sleep.
 *
 * Build: gcc -static -O2 -o tcp_pair tcp_pair.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rounds.h"

#define PORT 7000


static size_t round_len(int round, int from_server)
{
	return 3000 + 1000 * round + (from_server ? 517 : 0);
}

static unsigned char pattern(int round, int from_server, size_t i)
{
	return (unsigned char)(round * 31 + i * 7 + (from_server ? 101 : 3) + i / 251);
}

static void send_all(int fd, int round, int from_server)
{
	size_t len = round_len(round, from_server);
	unsigned char *buf = malloc(len);
	for (size_t i = 0; i < len; i++)
		buf[i] = pattern(round, from_server, i);
	size_t off = 0;
	while (off < len) {
		ssize_t n = write(fd, buf + off, len - off);
		if (n <= 0)
			fail(round, "send");
		off += n;
	}
	free(buf);
}

static void recv_check(int fd, int round, int from_server)
{
	size_t len = round_len(round, from_server), off = 0;
	unsigned char *buf = malloc(len);
	while (off < len) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 10000) != 1)
			fail(round, "nothing to read after %zu of %zu bytes", off, len);
		ssize_t n = read(fd, buf + off, len - off);
		if (n <= 0)
			fail(round, "read returned %zd after %zu of %zu bytes", n, off, len);
		off += n;
	}
	for (size_t i = 0; i < len; i++)
		if (buf[i] != pattern(round, from_server, i))
			fail(round, "byte %zu is %u, want %u", i, buf[i], pattern(round, from_server, i));
	/* Nothing more than what was sent. */
	struct pollfd p = {.fd = fd, .events = POLLIN};
	if (poll(&p, 1, 0) == 1)
		fail(round, "more data than the %zu bytes sent", len);
	free(buf);
}

static struct sockaddr_in addr(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(PORT)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static void lo_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
		fail(0, "SIOCGIFFLAGS lo");
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
		fail(0, "SIOCSIFFLAGS lo up");
	close(s);
}

int main(int argc, char **argv)
{
	round_prefix = "/tcp";
	round_side = "server";
	int rounds = argc > 1 ? atoi(argv[1]) : 1;
	lo_up();
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = addr();
	if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 8) != 0)
		fail(0, "bind/listen");
	pid_t child = fork();
	if (child == 0) {
		round_side = "client";
		close(ls);
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(c, (struct sockaddr *)&a, sizeof(a)) != 0)
			fail(0, "connect");
		for (int r = 0; r < rounds; r++) {
			send_all(c, r, 0);
			mark("ready", r, NULL);
			wait_go(r);
			recv_check(c, r, 1);
			int h = socket(AF_INET, SOCK_STREAM, 0);
			if (connect(h, (struct sockaddr *)&a, sizeof(a)) != 0)
				fail(r, "connect to the listening socket again");
			char hello[32];
			int n = snprintf(hello, sizeof(hello), "hello %d", r);
			if (write(h, hello, n) != n)
				fail(r, "hello");
			close(h);
			mark("ok", r, NULL);
			/* The next round's bytes only once the server has checked that nothing
			 * beyond this round's arrived. */
			char done[64];
			snprintf(done, sizeof(done), "/tcp-ok-%d-server", r);
			while (access(done, F_OK) != 0)
				usleep(5000);
		}
		for (;;)
			pause();
	}
	int s = accept(ls, NULL, NULL);
	if (s < 0)
		fail(0, "accept");
	for (int r = 0; r < rounds; r++) {
		send_all(s, r, 1);
		mark("ready", r, NULL);
		wait_go(r);
		recv_check(s, r, 0);
		struct pollfd p = {.fd = ls, .events = POLLIN};
		if (poll(&p, 1, 10000) != 1)
			fail(r, "no new connection on the listening socket");
		int h = accept(ls, NULL, NULL);
		if (h < 0)
			fail(r, "accept again");
		char want[32], got[32] = "";
		int n = snprintf(want, sizeof(want), "hello %d", r);
		size_t off = 0;
		while (off < (size_t)n) {
			ssize_t k = read(h, got + off, n - off);
			if (k <= 0)
				fail(r, "read hello");
			off += k;
		}
		if (memcmp(got, want, n) != 0)
			fail(r, "hello is %.*s", n, got);
		close(h);
		mark("ok", r, NULL);
	}
	for (;;)
		pause();
}
