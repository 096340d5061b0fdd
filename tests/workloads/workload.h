/* Helpers shared by the C workloads under tests/workloads/ (each stays one .c file plus this header):
 * fail loudly, print one JSON line per report, and ask the kernel whether a page is resident.
 * `static inline`, so a workload that uses only some of them still builds with -Wall -Werror.
 */
#ifndef TRACER_WORKLOAD_H
#define TRACER_WORKLOAD_H

#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static inline void die(const char *what)
{
	perror(what);
	exit(99);
}

/* One line on stdout with a single write(2), so lines from threads and children never interleave. */
static inline void out(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= (int)sizeof(buf) - 1)
		die("output line too long");
	buf[n++] = '\n';
	if (write(1, buf, n) != n)
		die("write");
}

/* Is the page holding p present in this process's page table? (bit 63 of its /proc/self/pagemap entry) */
static inline int mapped(const volatile void *p)
{
	static int fd = -1;
	uint64_t e = 0;
	if (fd < 0 && (fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) < 0)
		die("/proc/self/pagemap");
	if (pread(fd, &e, sizeof(e), (off_t)((uintptr_t)p / PAGE) * 8) != sizeof(e))
		die("pread pagemap");
	return (int)(e >> 63);
}

/* Sleep LINGER_MS (else default_ms) before exiting: tracer explains addresses, dfds and cwds from
 * /proc/PID when it decodes the events, not at the call. */
static inline void linger(long default_ms)
{
	long ms = getenv("LINGER_MS") ? atol(getenv("LINGER_MS")) : default_ms;
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* Wait until task `tid` (a thread, or another process) sleeps inside syscall `nr` (its /proc/TID/syscall line starts
 * with the number only while it is blocked in a call; "running" otherwise), then 20 ms more: the races
 * rewrite memory after the kernel has copied it and blocked, which a fixed sleep only hopes for. */
static inline void wait_blocked(int tid, long nr)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/syscall", tid); /* any task: a thread, or another process */
	const struct timespec tick = {0, 2 * 1000 * 1000}, settle = {0, 20 * 1000 * 1000};
	for (int i = 0; i < 30000; i++) { /* a minute at most: then the test sees what happened */
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die(path);
		ssize_t n = read(fd, line, sizeof(line) - 1);
		close(fd);
		if (n > 0) {
			line[n] = 0;
			char *end;
			long got = strtol(line, &end, 10);
			if (end != line && got == nr)
				break;
		}
		nanosleep(&tick, NULL);
	}
	nanosleep(&settle, NULL);
}

#endif
