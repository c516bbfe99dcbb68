/* thread_sig: main thread plus one thread that blocks SIGUSR1 and SIGUSR2 and has one of each
 * pending for itself (pthread_kill); the main thread has SIGUSR2 pending for itself.  Each has
 * its own parent-death signal (a per-thread attribute): SIGWINCH for the main thread, SIGURG
 * for the other (both ignored by default, so harmless when they fire).  Both count in a loop.
 * Prints nothing, runs until killed.  (gcc -O1 -static -pthread) */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <time.h>

volatile unsigned long ts_main, ts_thread;

static void *thread_fn(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGURG);
	pthread_kill(pthread_self(), SIGUSR1);
	pthread_kill(pthread_self(), SIGUSR2);
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (;;) {
		ts_thread++;
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(void)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigaddset(&s, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	prctl(PR_SET_PDEATHSIG, SIGWINCH);
	pthread_t t;
	pthread_create(&t, NULL, thread_fn, NULL);
	pthread_kill(pthread_self(), SIGUSR2);
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (;;) {
		ts_main++;
		nanosleep(&ts, NULL);
	}
}
