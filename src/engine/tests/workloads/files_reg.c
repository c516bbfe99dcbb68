/* files_reg: regular files, a directory, an unlinked file and a pipe shared by two tasks,
 * across checkpoints (zdtm style). argv[1] = a directory. Prepare, write DIR/ready (with the
 * child's pid), wait for SIGUSR1, verify from the inside, write DIR/result, idle until killed.
 *   3  DIR/data O_RDWR, 300 bytes, pos 123; 10 = dup of 3; the child inherits both (one
 *      description in two tasks)
 *   4  DIR/log O_WRONLY|O_APPEND, 41 bytes      5  DIR/data O_RDONLY pos 7, close-on-exec
 *   6  DIR (O_DIRECTORY)                        7  DIR/gone: 100 bytes, pos 37, unlinked
 *   8  pipe read end (4000 unread bytes), in both tasks; only the child keeps the write end 9
 *   12 DIR/fifo O_RDONLY|O_NONBLOCK, 13 the same FIFO O_WRONLY, 1000 unread bytes
 *   14 DIR/data O_PATH; 15 pidfd of the child, 16 pidfd of this task (O_NONBLOCK)
 *   11 /dev/null O_WRONLY, owned by this task (F_SETOWN) with signal 35 (F_SETSIG) */
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
#include <time.h>
#include <unistd.h>

#include "workload.h"

static long fdinfo_pos(pid_t pid, int fd)
{
	char p[128], line[256];
	snprintf(p, sizeof p, "/proc/%d/fdinfo/%d", pid, fd);
	FILE *f = fopen(p, "r");
	long pos = -1;
	if (!f)
		return -2;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "pos: %ld", &pos) == 1)
			break;
	fclose(f);
	return pos;
}

int main(int argc, char **argv)
{
	char buf[4096];
	if (argc < 2)
		return 2;
	wl_start(argv[1]);

	for (int i = 0; i < 300; i++)
		buf[i] = 'a' + i % 26;
	at(open(path("data"), O_RDWR | O_CREAT | O_TRUNC, 0644), 3);
	if (write(3, buf, 300) != 300 || lseek(3, 123, SEEK_SET) != 123)
		return 30;
	at(open(path("log"), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644), 4);
	if (write(4, "ferry append line 1\nferry append line 2\n\n", 41) != 41)
		return 31;
	at(open(path("data"), O_RDONLY | O_CLOEXEC), 5);
	lseek(5, 7, SEEK_SET);
	at(open(dir, O_RDONLY | O_DIRECTORY), 6);
	at(open(path("gone"), O_RDWR | O_CREAT | O_TRUNC, 0600), 7);
	for (int i = 0; i < 100; i++)
		buf[i] = 'A' + i % 26;
	if (write(7, buf, 100) != 100 || lseek(7, 37, SEEK_SET) != 37 || unlink(path("gone")))
		return 32;
	int p[2];
	if (pipe(p))
		return 33;
	at(p[0], 8);
	at(p[1], 9);
	for (int i = 0; i < 4000; i++)
		buf[i] = (char)(i * 7 + 1);
	if (write(9, buf, 4000) != 4000)
		return 34;
	if (dup2(3, 10) != 10)
		return 35;
	at(open("/dev/null", O_WRONLY), 11);
	if (fcntl(11, F_SETOWN, getpid()) || fcntl(11, F_SETSIG, 35))
		return 36;

	if (mkfifo(path("fifo"), 0600))
		return 37;
	at(open(path("fifo"), O_RDONLY | O_NONBLOCK), 12);
	at(open(path("fifo"), O_WRONLY), 13);
	for (int i = 0; i < 1000; i++)
		buf[i] = (char)(i * 3 + 2);
	if (write(13, buf, 1000) != 1000)
		return 38;

	pid_t child = fork();
	if (child == 0) {
		/* keeps every fd, the write end 9 alone (the parent closes its copy) */
		for (;;)
			nap(1000);
	}
	close(9);

	at(open(path("data"), O_PATH), 14);
	at((int)syscall(SYS_pidfd_open, child, 0), 15);
	at((int)syscall(SYS_pidfd_open, getpid(), O_NONBLOCK), 16);

	char ready[64];
	snprintf(ready, sizeof ready, "child=%d\n", child);
	ready_wait(ready);

	for (int fd = 3; fd <= 13; fd++)
		if (fd != 9)
			CHECK(syscall(SYS_kcmp, getpid(), child, 0 /* KCMP_FILE */, fd, fd) == 0,
			      "fd %d is not one description in parent and child", fd);
	CHECK(syscall(SYS_kcmp, getpid(), getpid(), 0, 3, 10) == 0, "fds 3 and 10 not one description");
	/* positions and sharing: 3 and 10 are one description, also in the child */
	CHECK(lseek(3, 0, SEEK_CUR) == 123, "fd 3 pos %ld", (long)lseek(3, 0, SEEK_CUR));
	CHECK(lseek(10, 0, SEEK_CUR) == 123, "fd 10 pos");
	CHECK(fdinfo_pos(child, 3) == 123, "child fd 3 pos %ld", fdinfo_pos(child, 3));
	lseek(10, 200, SEEK_SET);
	CHECK(lseek(3, 0, SEEK_CUR) == 200, "lseek on fd 10 did not move fd 3");
	CHECK(fdinfo_pos(child, 3) == 200, "lseek in the parent did not move the child's fd 3");
	CHECK(read(3, buf, 4) == 4 && memcmp(buf, "stuv", 4) == 0, "data at 200");
	/* O_APPEND */
	CHECK((fcntl(4, F_GETFL) & (O_APPEND | O_ACCMODE)) == (O_APPEND | O_WRONLY), "log flags %x", fcntl(4, F_GETFL));
	lseek(4, 0, SEEK_SET);
	CHECK(write(4, "x", 1) == 1, "log write");
	struct stat st;
	CHECK(fstat(4, &st) == 0 && st.st_size == 42, "O_APPEND write did not append (size %ld)", (long)st.st_size);
	/* read-only, close-on-exec, position */
	CHECK((fcntl(5, F_GETFL) & O_ACCMODE) == O_RDONLY && fcntl(5, F_GETFD) == FD_CLOEXEC, "fd 5 flags");
	CHECK(fcntl(3, F_GETFD) == 0, "fd 3 got close-on-exec");
	CHECK(lseek(5, 0, SEEK_CUR) == 7, "fd 5 pos");
	/* directory */
	int dfd = openat(6, "data", O_RDONLY);
	CHECK(dfd >= 0 && fstat(6, &st) == 0 && S_ISDIR(st.st_mode), "directory fd");
	close(dfd);
	/* unlinked file: content, position, still unlinked */
	char l[700];
	ssize_t ln = readlink("/proc/self/fd/7", l, sizeof l - 1);
	l[ln > 0 ? ln : 0] = 0;
	CHECK(strstr(l, "/gone (deleted)") != NULL, "fd 7 is %s", l);
	CHECK(fstat(7, &st) == 0 && st.st_nlink == 0 && st.st_size == 100 && (st.st_mode & 0777) == 0600,
	      "ghost stat");
	CHECK(lseek(7, 0, SEEK_CUR) == 37, "ghost pos");
	CHECK(pread(7, buf, 100, 0) == 100, "ghost read");
	for (int i = 0; i < 100; i++)
		if (buf[i] != 'A' + i % 26) {
			CHECK(0, "ghost byte %d", i);
			break;
		}
	/* the pipe: 4000 bytes in flight, the writer in the child */
	ssize_t got = 0, r;
	fcntl(8, F_SETFL, O_NONBLOCK);
	while (got < 4000 && (r = read(8, buf + got, 4000 - got)) > 0)
		got += r;
	CHECK(got == 4000, "pipe gave %zd bytes", got);
	for (int i = 0; i < got; i++)
		if (buf[i] != (char)(i * 7 + 1)) {
			CHECK(0, "pipe byte %d", i);
			break;
		}
	CHECK(read(8, buf, 1) < 0 && errno == EAGAIN, "pipe has extra data or no writer");
	CHECK((fcntl(11, F_GETFL) & O_ACCMODE) == O_WRONLY, "/dev/null flags");
	/* the FIFO: 1000 bytes in flight, both ends still the same FIFO */
	CHECK((fcntl(12, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK) &&
	      (fcntl(13, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_WRONLY, "FIFO flags");
	got = 0;
	while (got < 1000 && (r = read(12, buf + got, 1000 - got)) > 0)
		got += r;
	CHECK(got == 1000, "FIFO gave %zd bytes", got);
	for (int i = 0; i < got; i++)
		if (buf[i] != (char)(i * 3 + 2)) {
			CHECK(0, "FIFO byte %d", i);
			break;
		}
	CHECK(read(12, buf, 1) < 0 && errno == EAGAIN, "FIFO has extra data");
	CHECK(write(13, "z", 1) == 1 && read(12, buf, 1) == 1 && buf[0] == 'z', "FIFO ends not joined");
	CHECK(fcntl(11, F_GETOWN) == getpid() && fcntl(11, F_GETSIG) == 35, "owner %d signal %d",
	      fcntl(11, F_GETOWN), fcntl(11, F_GETSIG));

	/* O_PATH: still a path handle on the same file */
	CHECK((fcntl(14, F_GETFL) & O_PATH) != 0, "fd 14 lost O_PATH");
	CHECK(fstatat(14, "", &st, AT_EMPTY_PATH) == 0 && st.st_size == 300, "O_PATH fd does not name data");
	/* pidfds: of the child (signal it with 0) and of this task */
	CHECK(syscall(SYS_pidfd_send_signal, 15, 0, NULL, 0) == 0, "pidfd of the child");
	char pl[256];
	snprintf(pl, sizeof pl, "/proc/self/fdinfo/15");
	FILE *pf = fopen(pl, "r");
	int ppid_ = -1;
	while (pf && fgets(pl, sizeof pl, pf))
		if (sscanf(pl, "Pid: %d", &ppid_) == 1)
			break;
	if (pf)
		fclose(pf);
	CHECK(ppid_ == child, "pidfd 15 names %d, not the child %d", ppid_, child);
	CHECK((fcntl(16, F_GETFL) & O_NONBLOCK) != 0 && syscall(SYS_pidfd_send_signal, 16, 0, NULL, 0) == 0,
	      "pidfd of self");

	finish();
}
