/*
 * userns_ids: the workload of the user-namespace C/R tests (integration/tests/cr_userns.rs).
 *
 * Usage: userns_ids [TICK_MS=50]
 *
 * Run as the container's init (uid 0 inside its user namespace). Once: makes /home/u (owner
 * 1000:1000), a SysV shared memory segment (key 0x5553, owner set to 1000:1000, mode 0640),
 * and forks a child that takes groups 1000,1001,2000, gid 1000 and uid 1000 and creates
 * /dev/shm/child (tmpfs) and /home/u/child (rootfs). Then every tick each process counts and
 * rewrites its report atomically: the init /report-init, the child /home/u/report-child.
 * A report holds what the process sees from inside:
 *   count N
 *   uid R E S
 *   gid R E S
 *   groups G...
 *   uid_map <first> <lower> <count>      (the first line of /proc/self/uid_map)
 *   gid_map <first> <lower> <count>
 *   shm_file UID GID                     (child: owner of /dev/shm/child)
 *   rootfs_file UID GID                  (child: owner of /home/u/child)
 *   ipc UID GID CUID CGID MODE           (init: the segment's IPC_STAT)
 *
 * Build: gcc -static -O2 -o userns_ids userns_ids.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void first_line(const char *path, char *out, size_t len)
{
	FILE *f = fopen(path, "r");
	out[0] = 0;
	if (!f)
		return;
	unsigned a, b, c;
	if (fscanf(f, "%u %u %u", &a, &b, &c) == 3)
		snprintf(out, len, "%u %u %u", a, b, c);
	fclose(f);
}

static void report(const char *path, unsigned long n, int shmid, int child)
{
	char tmp[256], umap[64], gmap[64];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	uid_t r, e, s;
	gid_t gr, ge, gs;
	getresuid(&r, &e, &s);
	getresgid(&gr, &ge, &gs);
	fprintf(f, "count %lu\nuid %u %u %u\ngid %u %u %u\ngroups", n, r, e, s, gr, ge, gs);
	gid_t groups[64];
	int ng = getgroups(64, groups);
	for (int i = 0; i < ng; i++)
		fprintf(f, " %u", groups[i]);
	first_line("/proc/self/uid_map", umap, sizeof(umap));
	first_line("/proc/self/gid_map", gmap, sizeof(gmap));
	fprintf(f, "\nuid_map %s\ngid_map %s\n", umap, gmap);
	struct stat st;
	if (child) {
		if (stat("/dev/shm/child", &st) == 0)
			fprintf(f, "shm_file %u %u\n", st.st_uid, st.st_gid);
		if (stat("/home/u/child", &st) == 0)
			fprintf(f, "rootfs_file %u %u\n", st.st_uid, st.st_gid);
	} else {
		struct shmid_ds ds;
		if (shmctl(shmid, IPC_STAT, &ds) == 0)
			fprintf(f, "ipc %u %u %u %u %o\n", ds.shm_perm.uid, ds.shm_perm.gid,
				ds.shm_perm.cuid, ds.shm_perm.cgid, ds.shm_perm.mode & 0777);
	}
	fclose(f);
	rename(tmp, path);
}

static void make_file(const char *path)
{
	int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0640);
	if (fd < 0) {
		perror(path);
		exit(3);
	}
	if (write(fd, "mine\n", 5) != 5)
		exit(3);
	close(fd);
}

static void loop(const char *path, long tick_ms, int shmid, int child)
{
	struct timespec ts = {tick_ms / 1000, (tick_ms % 1000) * 1000000L};
	for (unsigned long n = 1;; n++) {
		report(path, n, shmid, child);
		nanosleep(&ts, NULL);
	}
}

int main(int argc, char **argv)
{
	long tick_ms = argc > 1 ? atol(argv[1]) : 50;
	if (tick_ms <= 0)
		tick_ms = 50;
	mkdir("/home", 0755);
	if (mkdir("/home/u", 0755) && access("/home/u", F_OK)) {
		perror("/home/u");
		return 2;
	}
	if (chown("/home/u", 1000, 1000)) {
		perror("chown /home/u");
		return 2;
	}
	int shmid = shmget(0x5553, 4096, IPC_CREAT | 0600);
	if (shmid < 0) {
		perror("shmget");
		return 2;
	}
	struct shmid_ds ds;
	shmctl(shmid, IPC_STAT, &ds);
	ds.shm_perm.uid = 1000;
	ds.shm_perm.gid = 1000;
	ds.shm_perm.mode = 0640;
	if (shmctl(shmid, IPC_SET, &ds)) {
		perror("IPC_SET");
		return 2;
	}
	pid_t pid = fork();
	if (pid < 0)
		return 2;
	if (pid == 0) {
		gid_t groups[] = {1000, 1001, 2000};
		if (setgroups(3, groups) || setresgid(1000, 1000, 1000) ||
		    setresuid(1000, 1000, 1000)) {
			perror("drop to 1000");
			return 4;
		}
		make_file("/dev/shm/child");
		make_file("/home/u/child");
		loop("/home/u/report-child", tick_ms, shmid, 1);
	}
	loop("/report-init", tick_ms, shmid, 0);
	return 0;
}
