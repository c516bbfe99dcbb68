/* maps_ghost: mappings of files unlinked while mapped, across checkpoints (zdtm style).
 * argv[1] = a directory. Prepare, write DIR/ready, wait for SIGUSR1, verify from the inside,
 * write DIR/result ("PASS" or "FAIL: why"), idle until killed.
 *   DIR/g-shared   2 pages, MAP_SHARED rw, fd closed, unlinked
 *   DIR/g-private  3 pages, MAP_PRIVATE rw (page 1 written: a private copy), fd closed, unlinked
 *   DIR/g-both     2 pages, fd 3 (O_RDWR, pos 5) kept open and MAP_SHARED rw, unlinked: the fd
 *                  and the mapping must reach one (still unlinked) file after a restore
 * and its own executable: it runs from a copy, DIR/exe, which it unlinks (an upgrade that
 * replaced a running binary looks the same: /proc/self/exe reads "PATH (deleted)"). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define PG 4096

static unsigned char pat(int seed, size_t i) { return (unsigned char)(i * 7 + seed); }

static int same(const unsigned char *p, size_t off, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != pat(seed, off + i))
			return 0;
	return 1;
}

/* Creates DIR/name with len bytes of pattern seed, open O_RDWR. */
static int make(const char *name, size_t len, int seed, char *path)
{
	sprintf(path, "%s/%s", dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
	unsigned char *b = malloc(len);
	for (size_t i = 0; i < len; i++)
		b[i] = pat(seed, i);
	if (fd < 0 || write(fd, b, len) != (ssize_t)len)
		exit(4);
	free(b);
	return fd;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	wl_start(argv[1]);
	char exe[600];
	snprintf(exe, sizeof exe, "%s/exe", dir);
	if (argc < 3) {
		/* Run from a copy of this binary, then unlink the copy. */
		int in = open("/proc/self/exe", O_RDONLY), out = open(exe, O_WRONLY | O_CREAT | O_TRUNC, 0755);
		char b[65536];
		ssize_t n;
		while (in >= 0 && out >= 0 && (n = read(in, b, sizeof b)) > 0)
			if (write(out, b, n) != n)
				return 11;
		close(in);
		close(out);
		execl(exe, exe, dir, "copied", (char *)NULL);
		return 12;
	}
	if (unlink(exe))
		return 13;
	struct sigaction sa_ = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa_, NULL);
	char ps[600], pp[600], pb[600];

	int s = make("g-shared", 2 * PG, 1, ps);
	unsigned char *gs = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
	int p = make("g-private", 3 * PG, 2, pp);
	unsigned char *gp = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, p, 0);
	int b = make("g-both", 2 * PG, 3, pb);
	unsigned char *gb = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
	if (gs == MAP_FAILED || gp == MAP_FAILED || gb == MAP_FAILED)
		return 5;
	memset(gp + PG, 0x77, PG);
	memcpy(gs + 10, "before-dump", 11); /* in the file's page cache: the ghost must carry it */
	close(s);
	close(p);
	if (dup2(b, 3) != 3 || (b != 3 && close(b)) || lseek(3, 5, SEEK_SET) != 5)
		return 6;
	if (unlink(ps) || unlink(pp) || unlink(pb))
		return 7;
	ready_wait("ready\n"); /* polls, so it runs: the test sees it scheduled */

	char want[700];
	snprintf(want, sizeof want, "%s (deleted)", ps);
	check_maps(gs, "gs", "rw-s", want);
	snprintf(want, sizeof want, "%s (deleted)", pp);
	check_maps(gp, "gp", "rw-p", want);
	snprintf(want, sizeof want, "%s (deleted)", pb);
	check_maps(gb, "gb", "rw-s", want);
	CHECK(access(ps, F_OK) && access(pp, F_OK) && access(pb, F_OK) && access(exe, F_OK),
	      "a name came back");
	char self[700] = "";
	readlink("/proc/self/exe", self, sizeof self - 1);
	snprintf(want, sizeof want, "%s (deleted)", exe);
	CHECK(!strcmp(self, want), "exe is %s", self);

	/* Contents. */
	CHECK(same(gs, 0, 10, 1) && !memcmp(gs + 10, "before-dump", 11) &&
	      same(gs + 21, 21, 2 * PG - 21, 1), "gs content");
	int priv = 1;
	for (int i = 0; i < PG; i++)
		priv &= gp[PG + i] == 0x77;
	CHECK(same(gp, 0, PG, 2) && priv && same(gp + 2 * PG, 2 * PG, PG, 2), "gp content");
	CHECK(same(gb, 0, 2 * PG, 3), "gb content");

	/* g-shared: writes through the mapping go to the (unlinked) file. */
	memcpy(gs + PG, "after-restore", 13);
	int m = map_file(gs, 2 * PG, O_RDONLY);
	char buf[32] = "";
	struct stat st;
	CHECK(m >= 0 && pread(m, buf, 13, PG) == 13 && !memcmp(buf, "after-restore", 13),
	      "gs write not in its file");
	CHECK(m >= 0 && !fstat(m, &st) && st.st_nlink == 0 && st.st_size == 2 * PG,
	      "gs file nlink %ld size %ld", (long)st.st_nlink, (long)st.st_size);
	close(m);
	/* g-private: unCOWed pages follow the file, the private page does not. */
	m = map_file(gp, 3 * PG, O_RDWR);
	CHECK(m >= 0 && pwrite(m, "file", 4, 0) == 4 && pwrite(m, "file", 4, PG) == 4, "gp file");
	CHECK(!memcmp(gp, "file", 4) && gp[PG] == 0x77, "gp does not map its file privately");
	close(m);
	/* g-both: fd 3 and the mapping are one file. */
	CHECK(lseek(3, 0, SEEK_CUR) == 5, "fd 3 pos %ld", (long)lseek(3, 0, SEEK_CUR));
	struct stat s3;
	m = map_file(gb, 2 * PG, O_RDONLY);
	CHECK(m >= 0 && !fstat(3, &s3) && !fstat(m, &st) && s3.st_ino == st.st_ino &&
	      s3.st_dev == st.st_dev && s3.st_nlink == 0, "gb is not fd 3's file");
	close(m);
	memcpy(gb + 100, "via-map", 7);
	CHECK(pread(3, buf, 7, 100) == 7 && !memcmp(buf, "via-map", 7), "gb write not in fd 3");
	CHECK(pwrite(3, "via-fd", 6, PG + 1) == 6 && !memcmp(gb + PG + 1, "via-fd", 6),
	      "fd 3 write not in gb");

	put("result", why[0] ? why : "PASS");
	for (;;)
		pause();
}
