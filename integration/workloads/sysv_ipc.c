/*
 * sysv_ipc: a container init holding SysV IPC objects in its IPC namespace across checkpoints.
 *
 * Usage: sysv_ipc ROUNDS [attached]
 *
 * Creates a 256 KiB shared memory segment (key 0xfe001) filled with round 0's pattern, a set
 * of three semaphores (key 0xfe002) valued 5, 7, 9, and a message queue (key 0xfe003) holding
 * two messages (types 1 and 2). The segment stays attached with "attached", else it is
 * detached and held by its id alone. Then for each round R: write /ipc-ready-R, wait for
 * /ipc-go-R (a test checkpoints and restores the container meanwhile), check from inside that
 * every key still names the same id, the segment's size, mode and every byte, the semaphore
 * values (5+R, 7+R, 9+R) and both messages (taken out type 2 first); then write round R+1's
 * pattern, raise each semaphore by one, queue the next messages, and write /ipc-ok-R, or
 * /ipc-fail-R with the reason.
 *
 * Build: gcc -static -O2 -o sysv_ipc sysv_ipc.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include "rounds.h"

#define SHM_KEY 0xfe001
#define SEM_KEY 0xfe002
#define MSG_KEY 0xfe003
#define SHM_SIZE (256 * 1024)

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};

struct msg {
	long type;
	char text[64];
};

static unsigned char pattern(int round, size_t i)
{
	return (unsigned char)(round * 13 + i * 5 + i / 4093);
}

static void fill(unsigned char *p, int round)
{
	for (size_t i = 0; i < SHM_SIZE; i++)
		p[i] = pattern(round, i);
}

static void queue_msgs(int q, int round)
{
	for (long t = 1; t <= 2; t++) {
		struct msg m = {.type = t};
		int n = snprintf(m.text, sizeof(m.text), "round %d message %ld", round, t);
		if (msgsnd(q, &m, n + 1, IPC_NOWAIT) != 0)
			fail(round, "msgsnd");
	}
}

int main(int argc, char **argv)
{
	round_prefix = "/ipc";
	int rounds = argc > 1 ? atoi(argv[1]) : 1;
	int attached = argc > 2 && strcmp(argv[2], "attached") == 0;
	int shm = shmget(SHM_KEY, SHM_SIZE, IPC_CREAT | IPC_EXCL | 0600);
	int sem = semget(SEM_KEY, 3, IPC_CREAT | IPC_EXCL | 0600);
	int q = msgget(MSG_KEY, IPC_CREAT | IPC_EXCL | 0600);
	if (shm < 0 || sem < 0 || q < 0)
		fail(0, "create shm %d sem %d msg %d", shm, sem, q);
	unsigned char *p = shmat(shm, NULL, 0);
	if (p == (void *)-1)
		fail(0, "shmat");
	fill(p, 0);
	if (!attached) {
		shmdt(p);
		p = NULL;
	}
	unsigned short init[3] = {5, 7, 9};
	union semun su = {.array = init};
	if (semctl(sem, 0, SETALL, su) != 0)
		fail(0, "SETALL");
	queue_msgs(q, 0);
	for (int r = 0; r < rounds; r++) {
		mark("ready", r, NULL);
		wait_go(r);
		if (shmget(SHM_KEY, 0, 0) != shm || semget(SEM_KEY, 0, 0) != sem ||
		    msgget(MSG_KEY, 0) != q)
			fail(r, "keys name other ids: shm %d/%d sem %d/%d msg %d/%d",
			     shmget(SHM_KEY, 0, 0), shm, semget(SEM_KEY, 0, 0), sem,
			     msgget(MSG_KEY, 0), q);
		struct shmid_ds ds;
		if (shmctl(shm, IPC_STAT, &ds) != 0)
			fail(r, "IPC_STAT shm");
		if (ds.shm_segsz != SHM_SIZE || (ds.shm_perm.mode & 0777) != 0600)
			fail(r, "shm size %zu mode %o", (size_t)ds.shm_segsz,
			     ds.shm_perm.mode & 0777);
		unsigned char *v = attached ? p : shmat(shm, NULL, 0);
		if (v == (void *)-1)
			fail(r, "shmat");
		for (size_t i = 0; i < SHM_SIZE; i++)
			if (v[i] != pattern(r, i))
				fail(r, "shm byte %zu is %u, want %u", i, v[i], pattern(r, i));
		unsigned short vals[3];
		union semun g = {.array = vals};
		if (semctl(sem, 0, GETALL, g) != 0)
			fail(r, "GETALL");
		for (int i = 0; i < 3; i++)
			if (vals[i] != init[i] + r)
				fail(r, "semaphore %d is %u, want %u", i, vals[i], init[i] + r);
		for (long t = 2; t >= 1; t--) {
			struct msg m;
			char want[64];
			snprintf(want, sizeof(want), "round %d message %ld", r, t);
			if (msgrcv(q, &m, sizeof(m.text), t, IPC_NOWAIT) < 0)
				fail(r, "msgrcv type %ld", t);
			if (strcmp(m.text, want) != 0)
				fail(r, "message %ld is \"%s\", want \"%s\"", t, m.text, want);
		}
		struct msqid_ds mq;
		if (msgctl(q, IPC_STAT, &mq) != 0 || mq.msg_qnum != 0)
			fail(r, "queue not empty after both messages");
		fill(v, r + 1);
		if (!attached)
			shmdt(v);
		struct sembuf up[3] = {{0, 1, 0}, {1, 1, 0}, {2, 1, 0}};
		if (semop(sem, up, 3) != 0)
			fail(r, "semop");
		queue_msgs(q, r + 1);
		mark("ok", r, NULL);
	}
	for (;;)
		pause();
}
