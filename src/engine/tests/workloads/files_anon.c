/* files_anon: eventfd, epoll, signalfd and timerfd across checkpoints (zdtm style).
 * argv[1] = a directory. Prepare, write DIR/ready, wait for SIGUSR1, then verify from the inside
 * and write DIR/result ("PASS" or "FAIL: why"), then idle until killed.
 *   3  eventfd, count 7, EFD_NONBLOCK          9  dup of 3 (one description)
 *   4  eventfd, count 3, EFD_SEMAPHORE          5  epoll: 3 (EPOLLIN, 0xfeed0003), 6 (EPOLLIN, 0x71)
 *   6  timerfd CLOCK_MONOTONIC every 20 ms     7  timerfd CLOCK_REALTIME one-shot in 1 hour, cloexec
 *   8  signalfd for SIGUSR2 (blocked, one SIGUSR2 pending), O_NONBLOCK
 *   10 memfd "ferry-memfd": 64 bytes at 0 and 5 bytes at 1 MiB (a hole between), pos 5
 *   11 a second description of the same memfd (open of /proc/self/fd/10), O_RDONLY, pos 9
 *   12 inotify, O_NONBLOCK: DIR for IN_CREATE (wd 1), DIR/watched for IN_MODIFY (wd 3: wd 2 was
 *      added and removed, so the restore must skip it)
 *   13 fanotify (FAN_CLASS_NOTIF | FAN_NONBLOCK): inode mark on DIR/watched for FAN_MODIFY
 * A child inherits every fd and idles: each description must stay one description in both
 * tasks (kcmp), the epoll instance included. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	wl_start(argv[1]);
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr2, NULL);

	at(eventfd(7, EFD_NONBLOCK), 3);
	at(eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK), 4);
	at(epoll_create1(0), 5);
	at(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 6);
	at(timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC), 7);
	at(signalfd(-1, &usr2, SFD_NONBLOCK), 8);
	if (dup2(3, 9) != 9)
		return 19;
	struct itimerspec every = { { 0, 20000000 }, { 0, 20000000 } };
	struct itimerspec hour = { { 0, 0 }, { 3600, 0 } };
	if (timerfd_settime(6, 0, &every, NULL) || timerfd_settime(7, 0, &hour, NULL))
		return 20;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xfeed0003ULL };
	if (epoll_ctl(5, EPOLL_CTL_ADD, 3, &ev))
		return 21;
	ev.data.u64 = 0x71;
	if (epoll_ctl(5, EPOLL_CTL_ADD, 6, &ev))
		return 22;
	at(memfd_create("ferry-memfd", 0), 10);
	static const char mc[] = "ferry memfd content: 0123456789abcdef0123456789abcdef0123456789\n";
	if (write(10, mc, 64) != 64 || pwrite(10, "tail!", 5, 1 << 20) != 5 || lseek(10, 5, SEEK_SET) != 5)
		return 23;
	at(open("/proc/self/fd/10", O_RDONLY), 11);
	lseek(11, 9, SEEK_SET);
	at(inotify_init1(IN_NONBLOCK), 12);
	char wp[600];
	snprintf(wp, sizeof wp, "%s/watched", dir);
	close(open(wp, O_CREAT | O_WRONLY, 0644));
	if (inotify_add_watch(12, dir, IN_CREATE) != 1 || inotify_add_watch(12, "/", IN_OPEN) != 2 ||
	    inotify_rm_watch(12, 2) || inotify_add_watch(12, wp, IN_MODIFY) != 3)
		return 24;
	at(fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE), 13);
	if (fanotify_mark(13, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, wp))
		return 25;
	kill(getpid(), SIGUSR2);
	pid_t child = fork();
	if (child == 0)
		for (;;)
			nap(1000);

	char ready[64];
	snprintf(ready, sizeof ready, "child=%d\n", child);
	ready_wait(ready);

	for (int fd = 3; fd <= 13; fd++)
		CHECK(syscall(SYS_kcmp, getpid(), child, 0 /* KCMP_FILE */, fd, fd) == 0,
		      "fd %d is not one description in parent and child", fd);
	uint64_t v = 0;
	/* eventfd 3 and its dup 9 are one counter: read 7 through 9, then 3 is empty */
	CHECK(read(9, &v, 8) == 8 && v == 7, "eventfd count %llu, want 7", (unsigned long long)v);
	CHECK(read(3, &v, 8) < 0 && errno == EAGAIN, "eventfd not emptied by reading its dup");
	CHECK((fcntl(3, F_GETFL) & O_NONBLOCK) != 0, "eventfd lost O_NONBLOCK");
	/* semaphore mode: each read takes one */
	CHECK(read(4, &v, 8) == 8 && v == 1, "semaphore eventfd read %llu, want 1", (unsigned long long)v);
	CHECK(read(4, &v, 8) == 8 && v == 1, "semaphore eventfd second read");
	/* epoll: write to the eventfd, epoll reports it with its data word */
	v = 5;
	CHECK(write(3, &v, 8) == 8, "eventfd write");
	struct epoll_event out[4];
	int n = epoll_wait(5, out, 4, 1000), seen_efd = 0, seen_tfd = 0;
	for (int i = 0; i < n; i++) {
		seen_efd |= out[i].data.u64 == 0xfeed0003ULL;
		seen_tfd |= out[i].data.u64 == 0x71;
	}
	CHECK(seen_efd, "epoll did not report the eventfd (n=%d)", n);
	if (!seen_tfd) {
		n = epoll_wait(5, out, 4, 1000);
		for (int i = 0; i < n; i++)
			seen_tfd |= out[i].data.u64 == 0x71;
	}
	CHECK(seen_tfd, "epoll did not report the timerfd");
	/* the periodic timer still ticks */
	uint64_t t1 = 0, t2 = 0;
	nap(60);
	CHECK(read(6, &t1, 8) == 8 && t1 >= 1, "timerfd did not tick (%llu)", (unsigned long long)t1);
	nap(60);
	CHECK(read(6, &t2, 8) == 8 && t2 >= 1, "timerfd stopped ticking");
	struct itimerspec cur;
	CHECK(timerfd_gettime(6, &cur) == 0 && cur.it_interval.tv_nsec == 20000000, "timerfd interval");
	CHECK(timerfd_gettime(7, &cur) == 0 && cur.it_value.tv_sec > 3000 && cur.it_value.tv_sec <= 3600 &&
	      cur.it_interval.tv_sec == 0, "one-shot timerfd left %ld s", (long)cur.it_value.tv_sec);
	CHECK(fcntl(7, F_GETFD) == FD_CLOEXEC && fcntl(6, F_GETFD) == 0, "close-on-exec flags");
	/* signalfd: the pending SIGUSR2 is read through it */
	struct signalfd_siginfo si;
	CHECK(read(8, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR2, "signalfd gave no SIGUSR2");
	CHECK(read(8, &si, sizeof si) < 0 && errno == EAGAIN, "signalfd lost O_NONBLOCK");
	kill(getpid(), SIGUSR2);
	CHECK(read(8, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR2, "signalfd mask lost");

	/* memfd: content, hole, positions of two descriptions of one inode */
	char mb[64];
	CHECK(lseek(10, 0, SEEK_CUR) == 5 && lseek(11, 0, SEEK_CUR) == 9, "memfd positions");
	CHECK(pread(11, mb, 64, 0) == 64 && memcmp(mb, mc, 64) == 0, "memfd content");
	CHECK(pread(11, mb, 5, 1 << 20) == 5 && memcmp(mb, "tail!", 5) == 0, "memfd tail");
	CHECK(pread(11, mb, 8, 4096) == 8 && memcmp(mb, "\0\0\0\0\0\0\0\0", 8) == 0, "memfd hole");
	CHECK(pwrite(10, "X", 1, 0) == 1 && pread(11, mb, 1, 0) == 1 && mb[0] == 'X', "memfd not one inode");
	CHECK((fcntl(11, F_GETFL) & O_ACCMODE) == O_RDONLY, "memfd fd 11 access mode");

	/* inotify: both watches fire, with their wds */
	char np[600];
	snprintf(np, sizeof np, "%s/newfile", dir);
	close(open(np, O_CREAT | O_WRONLY, 0644));
	int wfd = open(wp, O_WRONLY);
	CHECK(write(wfd, "m", 1) == 1, "write watched");
	close(wfd);
	int seen_create = 0, seen_modify = 0;
	for (int tries = 0; tries < 100 && !(seen_create && seen_modify); tries++) {
		char ib[4096] __attribute__((aligned(8)));
		ssize_t len = read(12, ib, sizeof ib);
		if (len <= 0) {
			nap(10);
			continue;
		}
		for (char *q = ib; q < ib + len;) {
			struct inotify_event *ie = (struct inotify_event *)q;
			if (ie->wd == 1 && (ie->mask & IN_CREATE) && ie->len && !strcmp(ie->name, "newfile"))
				seen_create = 1;
			if (ie->wd == 3 && (ie->mask & IN_MODIFY))
				seen_modify = 1;
			q += sizeof *ie + ie->len;
		}
	}
	CHECK(seen_create, "inotify wd 1 IN_CREATE did not fire");
	CHECK(seen_modify, "inotify wd 3 IN_MODIFY did not fire");
	CHECK((fcntl(12, F_GETFL) & O_NONBLOCK) != 0, "inotify lost O_NONBLOCK");
	/* fanotify: the inode mark fires for the write above */
	int fan_modify = 0;
	for (int tries = 0; tries < 100 && !fan_modify; tries++) {
		char fb[4096] __attribute__((aligned(8)));
		ssize_t len = read(13, fb, sizeof fb);
		if (len <= 0) {
			nap(10);
			continue;
		}
		struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)fb;
		for (; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
			fan_modify |= (m->mask & FAN_MODIFY) != 0;
			if (m->fd >= 0)
				close(m->fd);
		}
	}
	CHECK(fan_modify, "fanotify inode mark did not fire");

	finish();
}
