/* files_unsup: holds an io_uring instance at fd 3 (a kind ferry refuses to dump) and counts in
 * a loop; prints nothing. Used to prove a refused dump names pid, fd and kind, and that the
 * tree runs on. */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long unsup_counter;

int main(void)
{
	uint32_t params[30];
	memset(params, 0, sizeof params);
	long fd = syscall(425 /* io_uring_setup */, 4, params);
	if (fd < 0)
		return 1;
	if (fd != 3 && (dup2((int)fd, 3) != 3 || close((int)fd)))
		return 2;
	for (;;) {
		struct timespec t = { 0, 5000000 };
		nanosleep(&t, NULL);
		unsup_counter++;
	}
}
