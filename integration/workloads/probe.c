/*
 * probe: prints what the process sees of itself, then exits with a chosen code.
 *
 * Usage: probe [EXIT_CODE=0] [ARGS...]
 *
 * Prints one "key=value" line each for pid, ppid, uid, gid, cwd, hostname and argc, then
 * "arg[i]=..." for every argument and "env=NAME=VALUE" for every environment entry, and exits
 * with EXIT_CODE (0-255). Tests use it to check exec's --env/--cwd/--user/--process, the
 * container's namespaces (pid 1, hostname) and exit-code propagation through run and exec.
 *
 * Build: gcc -static -O2 -o probe probe.c
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
	char cwd[4096] = "?";
	char host[256] = "?";
	if (!getcwd(cwd, sizeof(cwd)))
		snprintf(cwd, sizeof(cwd), "?");
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "?");
	printf("pid=%d\nppid=%d\nuid=%u\ngid=%u\ncwd=%s\nhostname=%s\nargc=%d\n", getpid(),
	       getppid(), getuid(), getgid(), cwd, host, argc);
	for (int i = 0; i < argc; i++)
		printf("arg[%d]=%s\n", i, argv[i]);
	for (char **e = environ; *e; e++)
		printf("env=%s\n", *e);
	int code = argc > 1 ? atoi(argv[1]) : 0;
	printf("exit=%d\n", code);
	fflush(stdout);
	return code & 0xff;
}
