/* A freestanding i386 task (no 32-bit libc needed): sleeps forever through int 0x80. The
 * injector must refuse it with a clear "unsupported" error and leave it running. */
struct ts32 { int sec; int nsec; };

void _start(void)
{
	struct ts32 ts = { 0, 20 * 1000 * 1000 };
	for (;;)
		__asm__ volatile("int $0x80" : : "a"(162), "b"(&ts), "c"(0) : "memory");
}
