/* openat2 calls with known arguments, for tests/test_trace_live.py.
 *
 * Usage: openat2_cases CASE... (or `all`). Temporary files go to $WORKLOAD_DIR (default /tmp) and are
 * removed at exit. For every openat2 call one JSON line goes to stdout (one write(2), so that lines do
 * not interleave with a tracer writing to the same pipe):
 *   {"kind":"workload","case":...,"pid":...,"tid":...,"filename":ADDR,"how":ADDR,"usize":N,"ret":R,...}
 * R is the kernel's return value (-errno on failure). Extra fields say where the arguments were put
 * and whether their pages were mapped right before the call (from /proc/self/pagemap, which does not
 * fault anything in).
 *
 * Before exiting the program lingers (LINGER_MS, default 600) so that a tracer can still read its
 * /proc/PID/maps when it explains where an unreadable address lives.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define WINDOW 65536 /* >= the kernel's fault-around window (fault_around_bytes, 64 KiB by default) */

static const char *dir = "/tmp";
static char cleanup[8][512];
static int ncleanup;

static long openat2_raw(int dfd, const char *path, void *how, size_t usize)
{
	long r = syscall(SYS_openat2, dfd, path, how, usize);
	return r < 0 ? -errno : r;
}

static pid_t gettid_(void)
{
	return (pid_t)syscall(SYS_gettid);
}

#define HEAD "\"kind\":\"workload\",\"case\":\"%s\",\"pid\":%d,\"tid\":%d"
#define CALL "\"filename\":%lu,\"how\":%lu,\"usize\":%lu,\"ret\":%ld"
#define U(p) ((unsigned long)(uintptr_t)(p))

/* A file of `size` bytes holding `n` (offset, bytes, len) pieces; returns its path (kept for cleanup). */
static const char *make_file(const char *name, size_t size, int n, ...)
{
	char *path = cleanup[ncleanup++];
	snprintf(path, sizeof(cleanup[0]), "%s/%s.%d", dir, name, getpid());
	unsigned char *buf = calloc(1, size);
	va_list ap;
	va_start(ap, n);
	for (int i = 0; i < n; i++) {
		size_t off = va_arg(ap, size_t);
		const void *b = va_arg(ap, const void *);
		size_t len = va_arg(ap, size_t);
		memcpy(buf + off, b, len);
	}
	va_end(ap);
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, size) != (ssize_t)size || close(fd))
		die(path);
	free(buf);
	return path;
}

static void *map_file(const char *path, size_t size, int prot)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die(path);
	void *m = mmap(NULL, size, prot, MAP_PRIVATE, fd, 0); /* no MAP_POPULATE: nothing is mapped yet */
	if (m == MAP_FAILED)
		die("mmap");
	close(fd);
	return m;
}

static const struct open_how HOW = {.flags = O_RDONLY | O_CLOEXEC, .mode = 0, .resolve = RESOLVE_NO_SYMLINKS};
static const char HOSTNAME[] = "/etc/hostname";

static void case_ok(void)
{
	char path[] = "/etc/hostname";
	struct open_how how = HOW;
	long r = openat2_raw(AT_FDCWD, path, &how, sizeof(how));
	out("{" HEAD "," CALL "}", "ok", getpid(), gettid_(), U(path), U(&how), sizeof(how), r);
	if (r >= 0)
		close(r);
}

static void case_badptr(void)
{
	struct open_how how = HOW;
	long r = openat2_raw(AT_FDCWD, (const char *)1, &how, sizeof(how));
	out("{" HEAD "," CALL "}", "badptr", getpid(), gettid_(), 1UL, U(&how), sizeof(how), r);
}

/* Path and open_how in a private file mapping that nothing has touched. */
static void case_untouched(void)
{
	const size_t how_off = 256;
	const char *file = make_file("untouched", PAGE, 2, (size_t)0, HOSTNAME, sizeof(HOSTNAME), how_off, &HOW,
				     sizeof(HOW));
	char *m = map_file(file, PAGE, PROT_READ);
	int before = mapped(m);
	long r = openat2_raw(AT_FDCWD, m, m + how_off, sizeof(HOW));
	out("{" HEAD "," CALL ",\"file\":\"%s\",\"filename_off\":0,\"how_off\":%lu,\"mapped_before\":[%d]}",
	    "untouched", getpid(), gettid_(), U(m), U(m + how_off), sizeof(HOW), r, file, how_off, before);
	if (r >= 0)
		close(r);
}

/* "/etc/" at the end of page 0 (touched), "hostname" at the start of page 1 (not touched). Page 0 is
 * touched by a store: a write fault on a private mapping copies that one page (no fault-around, which
 * a read fault would do, mapping page 1 too from the page cache). */
static void case_cross_str(void)
{
	const size_t off = PAGE - 5;
	const char *file = make_file("cross_str", 2 * PAGE, 1, off, HOSTNAME, sizeof(HOSTNAME));
	char *m = map_file(file, 2 * PAGE, PROT_READ | PROT_WRITE);
	memcpy(m + off, "/etc/", 5); /* stores only: the bytes are already there */
	int b0 = mapped(m), b1 = mapped(m + PAGE);
	struct open_how how = HOW;
	long r = openat2_raw(AT_FDCWD, m + off, &how, sizeof(how));
	out("{" HEAD "," CALL ",\"file\":\"%s\",\"filename_off\":%lu,\"mapped_before\":[%d,%d]}", "cross_str",
	    getpid(), gettid_(), U(m + off), U(&how), sizeof(how), r, file, off, b0, b1);
	if (r >= 0)
		close(r);
}

/* open_how at the end of page 0: flags in page 0 (touched), mode and resolve in page 1 (not touched). */
static void case_cross_struct(void)
{
	const size_t off = PAGE - 8;
	const char *file = make_file("cross_struct", 2 * PAGE, 1, off, &HOW, sizeof(HOW));
	char *m = map_file(file, 2 * PAGE, PROT_READ | PROT_WRITE);
	*(volatile uint64_t *)(m + off) = HOW.flags; /* a store, as above */
	int b0 = mapped(m), b1 = mapped(m + PAGE);
	char path[] = "/etc/hostname";
	long r = openat2_raw(AT_FDCWD, path, m + off, sizeof(HOW));
	out("{" HEAD "," CALL ",\"file\":\"%s\",\"how_off\":%lu,\"mapped_before\":[%d,%d]}", "cross_struct",
	    getpid(), gettid_(), U(path), U(m + off), sizeof(HOW), r, file, off, b0, b1);
	if (r >= 0)
		close(r);
}

/* The path buffer is rewritten by another thread while openat2 blocks on a FIFO. */
static char changing[512];
static char fifo[512];
static const char NEW_PATH[] = "/changed/while/blocked";
static int caller; /* the blocked open's thread */
static unsigned long long unblocked_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns's clock) as the writer opens */

static void *rewriter(void *arg)
{
	(void)arg;
	wait_blocked(caller, SYS_openat2); /* the kernel has copied the path and waits for a writer */
	memcpy(changing, NEW_PATH, sizeof(NEW_PATH)); /* in place, shorter than the FIFO's path */
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	unblocked_ns = now.tv_sec * 1000000000ULL + now.tv_nsec;
	int fd = open(fifo, O_WRONLY | O_CLOEXEC);    /* unblocks the reader's open */
	if (fd < 0)
		die("open fifo for writing");
	close(fd);
	return NULL;
}

static void case_changed(void)
{
	snprintf(fifo, sizeof(fifo), "%s/fifo-with-a-long-name.%d", dir, getpid());
	strcpy(cleanup[ncleanup++], fifo);
	unlink(fifo);
	if (mkfifo(fifo, 0600))
		die("mkfifo");
	strcpy(changing, fifo);
	struct open_how how = {.flags = O_RDONLY | O_CLOEXEC};
	caller = gettid_();
	pthread_t t;
	if (pthread_create(&t, NULL, rewriter, NULL))
		die("pthread_create");
	long r = openat2_raw(AT_FDCWD, changing, &how, sizeof(how));
	pthread_join(t, NULL);
	out("{" HEAD "," CALL ",\"fifo\":\"%s\",\"new\":\"%s\",\"unblocked_ns\":%llu}", "changed", getpid(), gettid_(),
	    U(changing), U(&how), sizeof(how), r, fifo, NEW_PATH, unblocked_ns);
	if (r >= 0)
		close(r);
}

/* A path literal in .rodata, in the middle of a 64 KiB-aligned window of .rodata that nothing reads, so
 * that neither a fault nor fault-around has mapped its page when openat2 is called. */
static const struct {
	char before[WINDOW + 128];
	char path[sizeof("/etc/hostname")];
	char after[2 * WINDOW];
} rodata_blob __attribute__((aligned(WINDOW), used)) = {.path = "/etc/hostname"};

static void case_rodata(void)
{
	char exe[512];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0)
		die("readlink /proc/self/exe");
	exe[n] = 0;
	const char *p = rodata_blob.path;
	int before = mapped(p);
	struct open_how how = HOW;
	long r = openat2_raw(AT_FDCWD, p, &how, sizeof(how));
	out("{" HEAD "," CALL ",\"exe\":\"%s\",\"mapped_before\":[%d]}", "rodata", getpid(), gettid_(), U(p), U(&how),
	    sizeof(how), r, exe, before);
	if (r >= 0)
		close(r);
}

/* usize 32: 8 extension bytes, zero (accepted) then with one non-zero byte (E2BIG). */
static void case_ext(void)
{
	char path[] = "/etc/hostname";
	union {
		struct open_how how;
		unsigned char b[32];
	} big;
	memset(&big, 0, sizeof(big));
	big.how.flags = O_RDONLY;
	long r = openat2_raw(AT_FDCWD, path, &big, 32);
	out("{" HEAD "," CALL "}", "ext_zero", getpid(), gettid_(), U(path), U(&big), 32UL, r);
	if (r >= 0)
		close(r);
	big.b[27] = 0xab;
	r = openat2_raw(AT_FDCWD, path, &big, 32);
	out("{" HEAD "," CALL "}", "ext_nonzero", getpid(), gettid_(), U(path), U(&big), 32UL, r);
	if (r >= 0)
		close(r);
}

/* Paths and a thread name that a terminal must not interpret. Runs in its own thread, named by
 * PR_SET_NAME, so the other cases keep the program's comm. */
static const char *const NASTY[] = {
	"/nonexistent/[bold red]x[/]",
	"/nonexistent/\x1b[31mred\x1b[0m",
	"/nonexistent/line1\nline2",
	"/nonexistent/\xe2\x80\xaertl",
	"/nonexistent/bad\xff\xfeutf8",
};

static void *escape_thread(void *arg)
{
	(void)arg;
	if (prctl(PR_SET_NAME, "esc\x1b[7m\n"))
		die("prctl");
	for (size_t i = 0; i < sizeof(NASTY) / sizeof(NASTY[0]); i++) {
		char path[128], hex[256];
		strcpy(path, NASTY[i]);
		for (size_t k = 0; path[k]; k++)
			sprintf(hex + 2 * k, "%02x", (unsigned char)path[k]);
		struct open_how how = {.flags = O_RDONLY};
		long r = openat2_raw(AT_FDCWD, path, &how, sizeof(how));
		out("{" HEAD "," CALL ",\"path_hex\":\"%s\"}", "escape", getpid(), gettid_(), U(path), U(&how),
		    sizeof(how), r, hex);
	}
	return NULL;
}

static void case_escape(void)
{
	pthread_t t;
	if (pthread_create(&t, NULL, escape_thread, NULL))
		die("pthread_create");
	pthread_join(t, NULL);
}

static const struct {
	const char *name;
	void (*fn)(void);
} CASES[] = {
	{"ok", case_ok},         {"badptr", case_badptr},   {"untouched", case_untouched},
	{"cross_str", case_cross_str}, {"cross_struct", case_cross_struct}, {"changed", case_changed},
	{"rodata", case_rodata}, {"ext", case_ext},         {"escape", case_escape},
};
#define NCASES (sizeof(CASES) / sizeof(CASES[0]))

int main(int argc, char **argv)
{
	if (getenv("WORKLOAD_DIR"))
		dir = getenv("WORKLOAD_DIR");
	if (argc < 2) {
		fprintf(stderr, "usage: %s CASE... | all\n", argv[0]);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		int found = 0;
		for (size_t k = 0; k < NCASES; k++) {
			if (!strcmp(argv[i], "all") || !strcmp(argv[i], CASES[k].name)) {
				CASES[k].fn();
				found = 1;
			}
		}
		if (!found) {
			fprintf(stderr, "unknown case %s\n", argv[i]);
			return 2;
		}
	}
	linger(600);
	for (int i = 0; i < ncleanup; i++)
		unlink(cleanup[i]);
	return 0;
}
