/* maps_sysv: SysV shared memory attachments across checkpoints (zdtm style).
 * argv[1] = a directory. Prepare, write DIR/ready ("shmid=ID"), wait for SIGUSR1, verify from
 * the inside, write DIR/result ("PASS" or "FAIL: why"), idle until killed. The segment is not
 * removed: it lives in the IPC namespace across the checkpoint (the test removes it).
 *   a1  segment of 3 pages + 100 bytes, attached rw, filled with a pattern
 *   a2  the same segment attached read-only
 *   a3  the same segment attached rw, its first page unmapped (a VMA at segment offset 4096)
 * A child inherits the attachments and, told by the parent while verifying, writes through its
 * own a1: every attachment of both tasks must be the one segment again. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define PG 4096
#define SZ (3 * PG + 100)

static unsigned char pat(size_t i) { return (unsigned char)(i * 11 + 5); }

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	wl_start(argv[1]);
	struct sigaction sa_ = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa_, NULL);

	int id = shmget(IPC_PRIVATE, SZ, 0600 | IPC_CREAT);
	if (id < 0)
		return 4;
	unsigned char *a1 = shmat(id, NULL, 0);
	unsigned char *a2 = shmat(id, NULL, SHM_RDONLY);
	unsigned char *a3 = shmat(id, NULL, 0);
	if (a1 == (void *)-1 || a2 == (void *)-1 || a3 == (void *)-1)
		return 5;
	for (size_t i = 0; i < SZ; i++)
		a1[i] = pat(i);
	if (munmap(a3, PG))
		return 6;
	a3 += PG;

	pid_t child = fork();
	if (child == 0) {
		while (!go)
			pause();
		memcpy(a1 + 2 * PG, "child-was-here", 14);
		for (;;)
			pause();
	}
	char ready[64];
	snprintf(ready, sizeof ready, "shmid=%d\nchild=%d\n", id, child);
	ready_wait(ready); /* polls, so it runs: the test sees it scheduled */

	check_maps(a1, "a1", "rw-s 00000000", "/SYSV00000000 (deleted)");
	check_maps(a2, "a2", "r--s 00000000", "/SYSV00000000 (deleted)");
	check_maps(a3, "a3", "rw-s 00001000", "/SYSV00000000 (deleted)");

	int ok = 1;
	for (size_t i = 0; i < SZ; i++)
		ok &= a1[i] == pat(i) && a2[i] == pat(i);
	for (size_t i = PG; i < SZ; i++)
		ok &= a3[i - PG] == pat(i);
	CHECK(ok, "content");
	struct shmid_ds ds;
	CHECK(!shmctl(id, IPC_STAT, &ds) && ds.shm_nattch == 6, "nattch %ld (2 tasks x 3)",
	      (long)ds.shm_nattch);

	/* One segment: writes through any attachment show in the others and in a new one. */
	memcpy(a1 + PG + 7, "via-a1", 6);
	CHECK(!memcmp(a2 + PG + 7, "via-a1", 6) && !memcmp(a3 + 7, "via-a1", 6), "a1 write not shared");
	unsigned char *a4 = shmat(id, NULL, 0);
	CHECK(a4 != (void *)-1 && !memcmp(a4 + PG + 7, "via-a1", 6), "a1 write not in the segment");
	if (a4 != (void *)-1) {
		memcpy(a4 + 50, "via-a4", 6);
		CHECK(!memcmp(a1 + 50, "via-a4", 6), "segment write not in a1");
		shmdt(a4);
	}
	kill(child, SIGUSR1);
	for (int i = 0; i < 500 && memcmp(a3 + PG, "child-was-here", 14); i++)
		nap(10);
	CHECK(!memcmp(a3 + PG, "child-was-here", 14), "the child's a1 is another segment");
	CHECK(shmdt(a2) == 0, "shmdt(a2): %s", strerror(errno));

	put("result", why[0] ? why : "PASS");
	for (;;)
		pause();
}
