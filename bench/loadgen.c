/* Load generator for bench/run.py: N threads making openat2 (or getpid) calls at a given total rate.
 *
 *   loadgen [-s openat2|getpid] [-r CALLS_PER_S (0 = as fast as possible)] [-t THREADS] [-n CALLS]
 *           [-c CPU] [-p PATH] [-w]
 *
 * openat2 opens a path that does not exist (ENOENT after a cached negative lookup): the kernel copies
 * both pointer arguments (path and struct open_how), as in a real open, and no fd has to be closed,
 * so the traced syscall is the only one in the loop. -p names another such path (the bench tells the
 * calls it measures from the ones it makes to see whether a tracer is attached). -w waits for a line on stdin before starting (the
 * caller first adds us to its filters). The process names itself "tracer-loadgen" (comm filter).
 * Prints one JSON line: calls made, elapsed seconds, achieved rate, wall ns per call, and the CPU time
 * the process itself used (user + system, all threads): what tracing adds to the traced program, which
 * other load on the machine does not inflate the way it inflates wall time.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *path = "/nonexistent-tracer-bench/file";
static int use_getpid;
static double rate_per_thread;
static long calls_per_thread;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void *worker(void *unused)
{
	(void)unused;
	struct open_how how = {.flags = O_RDONLY | O_CLOEXEC, .resolve = RESOLVE_NO_SYMLINKS};
	uint64_t start = now_ns();
	for (long i = 0; i < calls_per_thread; i++) {
		if (rate_per_thread > 0 && (i & 15) == 0) {
			/* Pace in steps of 16 calls: sleep while ahead of the schedule. */
			uint64_t due = start + (uint64_t)(i / rate_per_thread * 1e9);
			uint64_t t = now_ns();
			if (due > t + 20000) {
				struct timespec d = {0, (long)(due - t)};
				nanosleep(&d, NULL);
			}
		}
		if (use_getpid)
			syscall(SYS_getpid);
		else
			syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof(how));
	}
	return NULL;
}

int main(int argc, char **argv)
{
	double rate = 0;
	int threads = 1, cpu = -1, wait = 0, opt;
	long calls = 100000;
	while ((opt = getopt(argc, argv, "s:r:t:n:c:p:w")) != -1) {
		switch (opt) {
		case 's': use_getpid = !strcmp(optarg, "getpid"); break;
		case 'r': rate = atof(optarg); break;
		case 't': threads = atoi(optarg); break;
		case 'n': calls = atol(optarg); break;
		case 'c': cpu = atoi(optarg); break;
		case 'p': path = optarg; break;
		case 'w': wait = 1; break;
		default:
			fprintf(stderr, "usage: %s [-s openat2|getpid] [-r RATE] [-t THREADS] [-n CALLS] [-c CPU] [-p PATH] [-w]\n",
				argv[0]);
			return 2;
		}
	}
	if (threads < 1 || threads > 64)
		threads = 1;
	prctl(PR_SET_NAME, "tracer-loadgen");
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		sched_setaffinity(0, sizeof(set), &set); /* threads inherit it */
	}
	rate_per_thread = rate / threads;
	calls_per_thread = calls / threads;
	printf("{\"ready\": %d}\n", getpid());
	fflush(stdout);
	if (wait) {
		char line[16];
		if (!fgets(line, sizeof(line), stdin))
			return 1;
	}
	pthread_t tid[64];
	uint64_t t0 = now_ns();
	for (int i = 0; i < threads; i++)
		pthread_create(&tid[i], NULL, worker, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(tid[i], NULL);
	double el = (now_ns() - t0) / 1e9;
	long made = calls_per_thread * threads;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu_ns = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e9 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e3;
	printf("{\"calls\": %ld, \"elapsed_s\": %.6f, \"rate\": %.0f, \"ns_per_call\": %.1f, \"cpu_ns\": %.0f, "
	       "\"cpu_ns_per_call\": %.1f}\n", made, el, made / el, el * 1e9 / made * threads, cpu_ns, cpu_ns / made);
	return 0;
}
