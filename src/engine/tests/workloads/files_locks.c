/* files_locks: flock, POSIX and OFD locks across checkpoints (zdtm style; dumped with
 * --file-locks). argv[1] = a directory. Prepare, write DIR/ready (with the child's pid), wait for
 * SIGUSR1, verify from the inside (a fresh process probes every lock), write DIR/result.
 *   3  DIR/a, flock LOCK_EX (the child shares the description)
 *   4  DIR/b, POSIX write lock on [10, 20) and read lock on [100, EOF); the child holds a POSIX
 *      read lock on [50, 60) through its own copy of fd 4
 *   5  DIR/c, OFD write lock on [0, 100) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static int lk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	return fcntl(fd, cmd, &fl);
}

static pid_t getlk_pid(int fd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	if (fcntl(fd, F_GETLK, &fl))
		return -2;
	return fl.l_type == F_UNLCK ? 0 : fl.l_pid;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	wl_start(argv[1]);
	at(open(path("a"), O_RDWR | O_CREAT | O_TRUNC, 0644), 3);
	at(open(path("b"), O_RDWR | O_CREAT | O_TRUNC, 0644), 4);
	at(open(path("c"), O_RDWR | O_CREAT | O_TRUNC, 0644), 5);
	if (flock(3, LOCK_EX | LOCK_NB) || lk(4, F_SETLK, F_WRLCK, 10, 10) || lk(4, F_SETLK, F_RDLCK, 100, 0) ||
	    lk(5, F_OFD_SETLK, F_WRLCK, 0, 100))
		return 20;
	pid_t child = fork();
	if (child == 0) {
		if (lk(4, F_SETLK, F_RDLCK, 50, 10))
			_exit(21);
		for (;;)
			nap(1000);
	}
	/* ready only once the child's lock is visible */
	for (int i = 0; getlk_pid(4, F_WRLCK, 50, 10) != child; i++) {
		if (i > 500)
			return 22;
		nap(10);
	}
	char ready[64];
	snprintf(ready, sizeof ready, "child=%d\n", child);
	ready_wait(ready);

	pid_t me = getpid();
	pid_t probe = fork();
	if (probe == 0) {
		/* a fresh process: every lock must be held by someone else */
		char w[1024] = "";
		int a = open(path("a"), O_RDWR), b = open(path("b"), O_RDWR), c = open(path("c"), O_RDWR);
		if (flock(a, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK)
			strcat(w, "flock on a not held; ");
		if (getlk_pid(b, F_WRLCK, 10, 10) != me)
			strcat(w, "POSIX write lock on b[10,20) not the parent's; ");
		if (getlk_pid(b, F_RDLCK, 15, 1) != me)
			strcat(w, "b[15] not write-locked; ");
		if (getlk_pid(b, F_WRLCK, 200, 1) != me)
			strcat(w, "POSIX read lock on b[100,EOF) missing; ");
		if (getlk_pid(b, F_RDLCK, 200, 1) != 0)
			strcat(w, "b[200] not a read lock; ");
		if (getlk_pid(b, F_WRLCK, 50, 10) != child)
			strcat(w, "child's read lock on b[50,60) missing; ");
		if (getlk_pid(b, F_WRLCK, 30, 10) != 0)
			strcat(w, "b[30,40) locked; ");
		struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
		if (fcntl(c, F_OFD_GETLK, &fl) || fl.l_type != F_WRLCK || fl.l_pid != -1)
			strcat(w, "OFD lock on c missing; ");
		if (w[0])
			put("probe", w);
		_exit(w[0] ? 1 : 0);
	}
	int st = 0;
	waitpid(probe, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "probe: see DIR/probe");
	/* and the locks are still ours to use: re-locking our own ranges works */
	CHECK(flock(3, LOCK_EX | LOCK_NB) == 0, "flock re-take by the owner");
	CHECK(lk(4, F_SETLK, F_WRLCK, 10, 10) == 0, "POSIX re-lock by the owner");
	finish();
}
