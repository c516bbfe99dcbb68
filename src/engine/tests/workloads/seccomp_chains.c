/* seccomp_chains: seccomp modes and filter chains across checkpoints (zdtm style).
 * argv[1] = mode, argv[2] = a directory. Prepare, write DIR/ready, wait for SIGUSR1, then verify
 * from the inside and write DIR/result ("PASS" or "FAIL: why"), then idle until killed.
 *
 *   single     one thread, no no_new_privs: filter A (getppid -> ERRNO 7), filter B with
 *              SECCOMP_FILTER_FLAG_LOG (uname -> ERRNO 13), then CAP_SYS_ADMIN dropped from the
 *              effective and permitted sets (as runc leaves a podman container: filters, no
 *              NNP, no CAP_SYS_ADMIN). After restore: both errnos, NNP 0, caps as before.
 *   threads    no_new_privs set; thread "plain" started before any filter (no seccomp),
 *              thread "strict" in SECCOMP_MODE_STRICT (counts the bytes it reads from a pipe),
 *              then filter A in the main thread, thread "stacked" inheriting A and adding B,
 *              thread "shared" inheriting A only. After restore each thread checks its own
 *              chain, and the strict thread must still read and count a byte sent to it.
 *   tsync      no_new_privs set; filter A, then two threads sharing it; after restore the main
 *              thread installs C with SECCOMP_FILTER_FLAG_TSYNC (needs every thread to share A's
 *              very filter object) and every thread must see getpgrp fail with 22.
 *   notif      a filter returning SECCOMP_RET_USER_NOTIF for getppid, installed with
 *              SECCOMP_FILTER_FLAG_NEW_LISTENER and its listener closed: a dump must refuse it
 *              by name and leave the task running.
 *   long       eight filters of 4050 instructions each (near the kernel's 32768-instruction
 *              limit per chain once converted: 253 KiB of programs), the newest failing getppid with 7.
 *   libseccomp a libseccomp-made filter (default allow; getppid -> ERRNO 7, uname -> ERRNO 13
 *              only when its first argument is 0, personality(0xffffffff) allowed, every
 *              other personality value -> ERRNO 1), loaded as podman's runc would, no NNP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
#ifdef WITH_LIBSECCOMP
#include <seccomp.h>
#endif

#include "workload.h"

/* return (nr == NR) ? ERRNO(err) : ALLOW */
static int deny(int nr, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog p = {4, f};
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

/* n instructions: loads of the syscall number, then (deny_ppid ? getppid -> ERRNO 7 : ALLOW) */
static int big(int n, int deny_ppid)
{
	static struct sock_filter f[4096];
	int k = 0;
	while (k < n - 3)
		f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, deny_ppid ? SYS_getppid : -1u, 0, 1);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 7);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog p = {n, f};
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p);
}

/* errno of a raw syscall that must fail, 0 if it succeeded */
static int err_of(long nr, long a1)
{
	errno = 0;
	long r = syscall(nr, a1);
	return r == -1 ? errno : 0;
}

static int status_int(const char *task, const char *key)
{
	char p[128], line[256];
	snprintf(p, sizeof p, "/proc/self/task/%s/status", task);
	FILE *f = fopen(p, "r");
	int v = -1;
	if (!f)
		return -2;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ':')
			v = atoi(line + strlen(key) + 1);
	fclose(f);
	return v;
}

/* Per-thread checks, run by each thread when asked (no libc calls the filters forbid). */
struct th {
	pthread_t t;
	pid_t tid;
	int want_ppid, want_uname, want_pgrp; /* expected errnos (0: must succeed) */
	volatile int ask, done;
	int got_ppid, got_uname, got_pgrp;
};
static struct th ths[4];
static volatile unsigned long strict_count;
static volatile pid_t strict_tid;
static int strict_pipe[2];

static void measure(struct th *t)
{
	t->got_ppid = err_of(SYS_getppid, 0);
	t->got_uname = err_of(SYS_uname, (long)&(struct utsname){0});
	t->got_pgrp = err_of(SYS_getpgrp, 0);
}

static void *worker(void *arg)
{
	struct th *t = arg;
	t->tid = syscall(SYS_gettid);
	if (t == &ths[1] && deny(SYS_uname, 13, 0))
		exit(21);
	for (;;) {
		if (t->ask && !t->done) {
			measure(t);
			t->done = 1;
		}
		usleep(1000);
	}
	return NULL;
}

static void *strict_main(void *arg)
{
	(void)arg;
	strict_tid = syscall(SYS_gettid);
	/* Only read, write, _exit and sigreturn from here on: count the bytes read. */
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0))
		exit(22);
	for (;;) {
		char c;
		if (read(strict_pipe[0], &c, 1) == 1)
			strict_count++;
	}
	return NULL;
}

static void start(struct th *t, int ppid, int un, int pgrp)
{
	t->want_ppid = ppid;
	t->want_uname = un;
	t->want_pgrp = pgrp;
	pthread_create(&t->t, NULL, worker, t);
	while (!t->tid)
		usleep(1000);
}

static void check_thread(const char *name, struct th *t)
{
	t->ask = 1;
	for (int i = 0; i < 5000 && !t->done; i++)
		usleep(1000);
	CHECK(t->done, "%s: no answer", name);
	CHECK(t->got_ppid == t->want_ppid, "%s: getppid errno %d, want %d", name, t->got_ppid, t->want_ppid);
	CHECK(t->got_uname == t->want_uname, "%s: uname errno %d, want %d", name, t->got_uname, t->want_uname);
	CHECK(t->got_pgrp == t->want_pgrp, "%s: getpgrp errno %d, want %d", name, t->got_pgrp, t->want_pgrp);
	t->ask = t->done = 0;
}

static void check_status(const char *name, pid_t tid, int mode, int nfilters)
{
	char task[32];
	snprintf(task, sizeof task, "%d", tid);
	CHECK(status_int(task, "Seccomp") == mode, "%s: Seccomp %d, want %d", name, status_int(task, "Seccomp"), mode);
	CHECK(status_int(task, "Seccomp_filters") == nfilters, "%s: Seccomp_filters %d, want %d", name,
	      status_int(task, "Seccomp_filters"), nfilters);
}

static void caps(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	syscall(SYS_capget, &h, d);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 1;
	const char *mode = argv[1];
	wl_start(argv[2]);
	struct th main_th = {0};
	main_th.tid = getpid();
	int nnp = 0;
	struct __user_cap_data_struct cap_before[2];

	if (!strcmp(mode, "single")) {
		if (deny(SYS_getppid, 7, 0) || deny(SYS_uname, 13, SECCOMP_FILTER_FLAG_LOG))
			return 20;
		struct __user_cap_data_struct d[2];
		caps(d);
		d[0].effective &= ~(1u << CAP_SYS_ADMIN);
		d[0].permitted &= ~(1u << CAP_SYS_ADMIN);
		struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
		if (syscall(SYS_capset, &h, d))
			return 23;
		main_th.want_ppid = 7;
		main_th.want_uname = 13;
	} else if (!strcmp(mode, "threads")) {
		nnp = 1;
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
		start(&ths[2], 0, 0, 0); /* plain */
		pthread_t st;
		if (pipe(strict_pipe))
			return 25;
		pthread_create(&st, NULL, strict_main, NULL);
		if (write(strict_pipe[1], "x", 1) != 1)
			return 26;
		while (!strict_tid || strict_count < 1)
			usleep(1000);
		if (deny(SYS_getppid, 7, 0))
			return 20;
		start(&ths[1], 7, 13, 0); /* stacked: A then B */
		start(&ths[0], 7, 0, 0);  /* shared: A */
		main_th.want_ppid = 7;
	} else if (!strcmp(mode, "tsync")) {
		nnp = 1;
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
		if (deny(SYS_getppid, 7, 0))
			return 20;
		start(&ths[0], 7, 0, 22);
		start(&ths[2], 7, 0, 22);
		main_th.want_ppid = 7;
		main_th.want_pgrp = 22;
	} else if (!strcmp(mode, "long")) {
		nnp = 1;
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
		for (int i = 0; i < 8; i++)
			if (big(4050, i == 7))
				return 20;
		main_th.want_ppid = 7;
	} else if (!strcmp(mode, "notif")) {
		struct sock_filter f[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog p = {4, f};
		int fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &p);
		if (fd < 0 || close(fd))
			return 20;
		/* Without a listener the kernel fails the syscall with ENOSYS. */
		main_th.want_ppid = ENOSYS;
	} else if (!strcmp(mode, "libseccomp")) {
#ifdef WITH_LIBSECCOMP
		scmp_filter_ctx c = seccomp_init(SCMP_ACT_ALLOW);
		if (!c || seccomp_rule_add(c, SCMP_ACT_ERRNO(7), SCMP_SYS(getppid), 0) ||
		    seccomp_rule_add(c, SCMP_ACT_ERRNO(13), SCMP_SYS(uname), 1, SCMP_A0(SCMP_CMP_EQ, 0)) ||
		    seccomp_rule_add(c, SCMP_ACT_ERRNO(1), SCMP_SYS(personality), 1,
				     SCMP_A0(SCMP_CMP_NE, 0xffffffff)) ||
		    seccomp_attr_set(c, SCMP_FLTATR_CTL_NNP, 0) || seccomp_load(c))
			return 20;
		seccomp_release(c);
		main_th.want_ppid = 7;
		main_th.want_uname = 0; /* uname(buf) with a real buffer: allowed, uname(NULL) not */
#else
		return 24;
#endif
	} else {
		return 1;
	}
	caps(cap_before);
	char ready[64];
	snprintf(ready, sizeof ready, "pid=%d\n", getpid());
	put("ready", ready);
	while (!go)
		pause();

	/* Verify, from the inside. */
	CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == nnp, "no_new_privs %d, want %d",
	      prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), nnp);
	struct __user_cap_data_struct cap_after[2];
	caps(cap_after);
	CHECK(!memcmp(cap_before, cap_after, sizeof cap_after), "capabilities changed: eff %x/%x prm %x/%x",
	      cap_after[0].effective, cap_after[1].effective, cap_after[0].permitted, cap_after[1].permitted);
	if (!strcmp(mode, "tsync")) {
		/* Needs A to be one object shared by every thread, as before the checkpoint. */
		int r = deny(SYS_getpgrp, 22, SECCOMP_FILTER_FLAG_TSYNC);
		CHECK(r == 0, "TSYNC install returned %d (errno %d)", r, errno);
	}
	measure(&main_th);
	CHECK(main_th.got_ppid == main_th.want_ppid, "main: getppid errno %d, want %d", main_th.got_ppid, main_th.want_ppid);
	CHECK(main_th.got_uname == main_th.want_uname, "main: uname errno %d, want %d", main_th.got_uname, main_th.want_uname);
	CHECK(main_th.got_pgrp == main_th.want_pgrp, "main: getpgrp errno %d, want %d", main_th.got_pgrp, main_th.want_pgrp);
	if (!strcmp(mode, "single")) {
		check_status("main", getpid(), 2, 2);
	} else if (!strcmp(mode, "long")) {
		check_status("main", getpid(), 2, 8);
	} else if (!strcmp(mode, "libseccomp")) {
		CHECK(err_of(SYS_uname, 0) == 13, "uname(NULL) errno %d, want 13", err_of(SYS_uname, 0));
		CHECK(syscall(SYS_personality, 0xffffffffUL) >= 0, "personality(query) refused");
		CHECK(err_of(SYS_personality, 0x0008) == 1, "personality(0x8) not refused with EPERM");
		check_status("main", getpid(), 2, 1);
	} else if (!strcmp(mode, "threads")) {
		check_status("main", getpid(), 2, 1);
		check_thread("shared", &ths[0]);
		check_status("shared", ths[0].tid, 2, 1);
		check_thread("stacked", &ths[1]);
		check_status("stacked", ths[1].tid, 2, 2);
		check_thread("plain", &ths[2]);
		check_status("plain", ths[2].tid, 0, 0);
		check_status("strict", strict_tid, 1, 0);
		unsigned long c0 = strict_count;
		CHECK(write(strict_pipe[1], "y", 1) == 1, "write to the strict thread's pipe");
		for (int i = 0; i < 5000 && strict_count == c0; i++)
			usleep(1000);
		CHECK(strict_count == c0 + 1, "the strict thread counted %lu, want %lu", strict_count, c0 + 1);
	} else if (!strcmp(mode, "tsync")) {
		check_status("main", getpid(), 2, 2);
		check_thread("t1", &ths[0]);
		check_status("t1", ths[0].tid, 2, 2);
		check_thread("t2", &ths[2]);
		check_status("t2", ths[2].tid, 2, 2);
	}
	put("result", why[0] ? why : "PASS");
	for (;;)
		pause();
}
