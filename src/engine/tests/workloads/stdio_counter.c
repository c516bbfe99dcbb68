/*
 * stdio_counter: writes "count N\n" on its stdout (fd 1) every 20 ms with write(2), N going
 * up by one each time, forever. A write error (the pipe's reader gone) ends it with status 3.
 * The inherit-fd tests restore it onto a new stdout pipe and read the count carrying on there.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	unsigned long n = 0;
	for (;;) {
		char line[64];
		int len = snprintf(line, sizeof(line), "count %lu\n", ++n);
		if (write(1, line, len) != len)
			return 3;
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		while (nanosleep(&ts, &ts) != 0)
			;
	}
}
