/* maps_memfd: memfd mappings across checkpoints (zdtm style).
 * argv[1] = a directory. Prepare, write DIR/ready ("child=PID"), wait for SIGUSR1, verify from
 * the inside, write DIR/result ("PASS" or "FAIL: why"), idle until killed.
 *   fd 3  memfd "ferry-mapfd" (sealable), 3 pages; MAP_SHARED rw (sa) and MAP_PRIVATE rw (pa,
 *         page 0 written: a private copy, pages 1-2 still the file's); seals GROW|SHRINK added
 *         after mapping
 *   memfd "ferry-closed", 2 pages, MAP_SHARED rw (sb) and MAP_PRIVATE r- (pb); its fd closed
 *         plus ra: MAP_SHARED read-only (mprotect may make it writable: fd 3 is O_RDWR)
 *   fd 4  memfd "ferry-fwrite", 1 page, MAP_SHARED rw (sc) made before F_SEAL_FUTURE_WRITE
 *   fd 5  memfd "ferry-sealw", 1 page, F_SEAL_WRITE, then MAP_SHARED r- (sd, cannot become
 *         writable) and MAP_PRIVATE rw (pd, written: a private copy)
 * A child inherits every mapping and, when told (SIGUSR1 from the parent while verifying),
 * writes a marker into sb: both tasks must map one memfd again. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define PG 4096
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

static unsigned char pat(int seed, size_t i) { return (unsigned char)(i * 13 + seed); }

static void fill(int fd, size_t len, int seed)
{
	unsigned char *b = malloc(len);
	for (size_t i = 0; i < len; i++)
		b[i] = pat(seed, i);
	if (ftruncate(fd, len) || pwrite(fd, b, len, 0) != (ssize_t)len)
		exit(4);
	free(b);
}

static int same(const unsigned char *p, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != pat(seed, i))
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	wl_start(argv[1]);
	struct sigaction sa_ = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa_, NULL);

	int a = memfd_create("ferry-mapfd", MFD_ALLOW_SEALING);
	at(a, 3);
	fill(3, 3 * PG, 1);
	unsigned char *sa = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, 3, 0);
	unsigned char *pa = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, 3, 0);
	if (sa == MAP_FAILED || pa == MAP_FAILED)
		return 5;
	unsigned char *ra = mmap(NULL, PG, PROT_READ, MAP_SHARED, 3, 2 * PG);
	if (ra == MAP_FAILED)
		return 5;
	memset(pa, 0x5a, PG); /* page 0 is a private copy now */
	if (fcntl(3, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK))
		return 6;

	int b = memfd_create("ferry-closed", 0);
	fill(b, 2 * PG, 2);
	unsigned char *sb = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
	unsigned char *pb = mmap(NULL, 2 * PG, PROT_READ, MAP_PRIVATE, b, 0);
	if (sb == MAP_FAILED || pb == MAP_FAILED)
		return 7;
	close(b);

	int c = memfd_create("ferry-fwrite", MFD_ALLOW_SEALING);
	at(c, 4);
	fill(4, PG, 3);
	unsigned char *sc = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, 4, 0);
	if (sc == MAP_FAILED || fcntl(4, F_ADD_SEALS, F_SEAL_FUTURE_WRITE))
		return 8;

	int d = memfd_create("ferry-sealw", MFD_ALLOW_SEALING);
	at(d, 5);
	fill(5, PG, 4);
	if (fcntl(5, F_ADD_SEALS, F_SEAL_WRITE))
		return 9;
	unsigned char *sd = mmap(NULL, PG, PROT_READ, MAP_SHARED, 5, 0);
	unsigned char *pd = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, 5, 0);
	if (sd == MAP_FAILED || pd == MAP_FAILED)
		return 10;
	memset(pd, 0x6b, 64);

	pid_t child = fork();
	if (child == 0) {
		while (!go)
			pause();
		memcpy(sb + PG, "child-was-here", 14);
		for (;;)
			pause();
	}
	char ready[64];
	snprintf(ready, sizeof ready, "child=%d\n", child);
	ready_wait(ready); /* polls, so it runs: the test sees it scheduled */

	check_maps(sa, "sa", "rw-s", "/memfd:ferry-mapfd (deleted)");
	check_maps(pa, "pa", "rw-p", "/memfd:ferry-mapfd (deleted)");
	check_maps(sb, "sb", "rw-s", "/memfd:ferry-closed (deleted)");
	check_maps(pb, "pb", "r--p", "/memfd:ferry-closed (deleted)");
	check_maps(sc, "sc", "rw-s", "/memfd:ferry-fwrite (deleted)");
	char link[256] = "";
	readlink("/proc/self/fd/3", link, sizeof link - 1);
	CHECK(!strcmp(link, "/memfd:ferry-mapfd (deleted)"), "fd 3 is %s", link);

	/* Contents. */
	CHECK(same(sa, 3 * PG, 1), "sa content");
	int priv = 1;
	for (int i = 0; i < PG; i++)
		priv &= pa[i] == 0x5a;
	CHECK(priv, "pa page 0 lost its private copy");
	CHECK(same(pa + PG, 2 * PG, 1), "pa pages 1-2 content");
	CHECK(same(sb, 2 * PG, 2) && same(pb, 2 * PG, 2), "sb/pb content");
	CHECK(same(sc, PG, 3), "sc content");

	/* The mappings and fd 3 are one file: writes go both ways, unCOWed private pages follow. */
	struct stat st3, stm;
	int m = map_file(sa, 3 * PG, O_RDONLY);
	CHECK(m >= 0 && !fstat(3, &st3) && !fstat(m, &stm) && st3.st_ino == stm.st_ino,
	      "sa is not fd 3's memfd");
	close(m);
	memcpy(sa + 100, "via-map", 7);
	char buf[16] = "";
	CHECK(pread(3, buf, 7, 100) == 7 && !memcmp(buf, "via-map", 7), "write via sa not in fd 3");
	CHECK(pwrite(3, "via-fd", 6, PG + 8) == 6 && !memcmp(sa + PG + 8, "via-fd", 6),
	      "write via fd 3 not in sa");
	CHECK(!memcmp(pa + PG + 8, "via-fd", 6), "unCOWed pa page 1 does not follow the file");
	CHECK(pa[100] == 0x5a, "pa page 0 follows the file");

	/* Seals. */
	CHECK(fcntl(3, F_GET_SEALS) == (F_SEAL_GROW | F_SEAL_SHRINK), "fd 3 seals %#x",
	      fcntl(3, F_GET_SEALS));
	CHECK(ftruncate(3, PG) < 0 && errno == EPERM, "fd 3 shrank");
	CHECK(fcntl(4, F_GET_SEALS) == F_SEAL_FUTURE_WRITE, "fd 4 seals %#x", fcntl(4, F_GET_SEALS));
	CHECK(pwrite(4, "x", 1, 0) < 0 && errno == EPERM, "fd 4 took a write");
	void *w = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, 4, 0);
	CHECK(w == MAP_FAILED, "new writable mapping of fd 4");
	memcpy(sc + 10, "old-map", 7);
	CHECK(pread(4, buf, 7, 10) == 7 && !memcmp(buf, "old-map", 7), "sc write not in fd 4");

	/* A read-only shared mapping of a writable memfd may become writable; of a sealed one not. */
	CHECK(ra[0] == pat(1, 2 * PG), "ra content");
	CHECK(mprotect(ra, PG, PROT_READ | PROT_WRITE) == 0, "mprotect(ra, rw): %s", strerror(errno));
	if (!mprotect(ra, PG, PROT_READ | PROT_WRITE)) {
		memcpy(ra + 1, "ra", 2);
		CHECK(pread(3, buf, 2, 2 * PG + 1) == 2 && !memcmp(buf, "ra", 2), "ra write not in fd 3");
	}
	CHECK(fcntl(5, F_GET_SEALS) == F_SEAL_WRITE, "fd 5 seals %#x", fcntl(5, F_GET_SEALS));
	CHECK(same(sd, PG, 4), "sd content");
	CHECK(pd[0] == 0x6b && pd[63] == 0x6b && pd[64] == pat(4, 64), "pd content");
	CHECK(pwrite(5, "x", 1, 0) < 0 && errno == EPERM, "fd 5 took a write");
	CHECK(mprotect(sd, PG, PROT_READ | PROT_WRITE) < 0, "sd became writable");

	/* The closed memfd: reached through its mapping, shared with the child's mapping. */
	m = map_file(sb, 2 * PG, O_RDWR);
	CHECK(m >= 0 && pwrite(m, "via-mapfile", 11, 40) == 11 && !memcmp(sb + 40, "via-mapfile", 11),
	      "sb is not its memfd");
	CHECK(!memcmp(pb + 40, "via-mapfile", 11), "unCOWed pb does not follow its memfd");
	close(m);
	kill(child, SIGUSR1);
	for (int i = 0; i < 500 && memcmp(sb + PG, "child-was-here", 14); i++)
		nap(10);
	CHECK(!memcmp(sb + PG, "child-was-here", 14), "the child's sb is another memfd");

	put("result", why[0] ? why : "PASS");
	for (;;)
		pause();
}
