/* zombie_stop: a parent with a zombie child (exited with status 7, never waited for) and a
 * child stopped by SIGSTOP; the parent counts in a loop.  Prints nothing, runs until killed. */
#define _GNU_SOURCE
#include <signal.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long zs_counter;

int main(void)
{
	pid_t z = fork();
	if (z == 0)
		_exit(7);
	pid_t s = fork();
	if (s == 0) {
		raise(SIGSTOP);
		for (;;)
			pause();
	}
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (;;) {
		zs_counter++;
		nanosleep(&ts, NULL);
	}
}
