/*
 * Ambient capabilities across checkpoints (zdtm style).
 *
 * mode "root": as root, CAP_NET_BIND_SERVICE and CAP_NET_RAW go into the inheritable and
 * ambient sets. mode "user": as uid/gid 1000, keeping only those two in the permitted,
 * effective, inheritable and ambient sets (what a container with runAsUser and ambient caps
 * looks like). Then "ready"; on SIGUSR1 the task checks its own sets from the inside
 * (PR_CAP_AMBIENT_IS_SET for every capability, capget, the uids) and writes PASS or what
 * differs to WORK/result.
 *
 * usage: caps_ambient MODE WORK
 */
#define _GNU_SOURCE
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <grp.h>
#include "workload.h"

#define CAP_BIT(c) (1ull << (c))
static const unsigned long long WANT_AMB = CAP_BIT(CAP_NET_BIND_SERVICE) | CAP_BIT(CAP_NET_RAW);

static int capget2(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	return syscall(SYS_capget, &h, d);
}

static int capset2(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	return syscall(SYS_capset, &h, d);
}

static unsigned long long ambient_now(void)
{
	unsigned long long m = 0;
	for (int c = 0; c < 64; c++)
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
			m |= CAP_BIT(c);
	return m;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 1;
	int user = !strcmp(argv[1], "user");
	wl_start(argv[2]);
	setup_report = 1;
	struct __user_cap_data_struct d[2], before[2], now[2];
	if (capget2(d))
		setup_fail(20);
	if (user) {
		if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) || setgroups(0, NULL) ||
		    setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000))
			setup_fail(21);
		d[0].permitted = d[0].effective = (unsigned)WANT_AMB;
		d[1].permitted = d[1].effective = 0;
	}
	d[0].inheritable |= (unsigned)WANT_AMB;
	if (capset2(d))
		setup_fail(22);
	for (int c = 0; c < 64; c++)
		if ((WANT_AMB & CAP_BIT(c)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0))
			setup_fail(23);
	if (ambient_now() != WANT_AMB || capget2(before))
		setup_fail(24);
	ready_wait("ready");

	unsigned long long amb = ambient_now();
	CHECK(amb == WANT_AMB, "ambient %#llx, want %#llx", amb, WANT_AMB);
	CHECK(capget2(now) == 0, "capget");
	CHECK(!memcmp(now, before, sizeof(now)),
	      "capabilities eff %#x prm %#x inh %#x, were %#x %#x %#x", now[0].effective,
	      now[0].permitted, now[0].inheritable, before[0].effective, before[0].permitted,
	      before[0].inheritable);
	uid_t r, e, s;
	getresuid(&r, &e, &s);
	uid_t want = user ? 1000 : 0;
	CHECK(r == want && e == want && s == want, "uids %u/%u/%u, want %u", r, e, s, want);
	finish();
}
