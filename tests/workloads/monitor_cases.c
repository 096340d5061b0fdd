/* openat2 calls for tests/test_monitor_live.py: each case makes one openat2 call that should raise a known
 * set of alerts under the bundled default policy (tracer/policies/default.toml), or none (`benign`).
 *
 * Usage: monitor_cases CASE... (`triggers` = every triggering case, `benign` = the benign calls). One JSON
 * line per call on stdout (one write(2)): {"kind":"workload","case":...,"pid":...,"tid":...,"ret":R,"path":...}
 * where R is -errno on failure. Nothing outside $WORKLOAD_DIR is written: writes to system trees go to
 * directories that do not exist (ENOENT). Lingers LINGER_MS (default 1000) so that /proc/PID/{cwd,fd}
 * can still be read when the events are decoded, then exits with $EXIT_CODE (default 0).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static const char *dir = "/tmp";
static char files[8][512];
static int nfiles;

static long openat2_at(int dfd, const char *path, void *how)
{
	long r = syscall(SYS_openat2, dfd, path, how, sizeof(struct open_how));
	return r < 0 ? -errno : r;
}

/* One call, one report line; the opened fd (if any) is closed. */
static void call(const char *name, int dfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve)
{
	struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
	long r = openat2_at(dfd, path, &how);
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "{\"kind\":\"workload\",\"case\":\"%s\",\"pid\":%d,\"tid\":%ld,\"ret\":%ld}\n",
			 name, getpid(), (long)syscall(SYS_gettid), r);
	if (write(1, buf, n) != n)
		die("write");
	if (r >= 0)
		close((int)r);
}

static const char *tmpfile_path(const char *name)
{
	char *p = files[nfiles++];
	snprintf(p, sizeof(files[0]), "%s/%s.%d", dir, name, getpid());
	return p;
}

static void c_etc_write_follow(void)
{
	call("etc_write_follow", AT_FDCWD, "/etc/tracer-monitor-test.d/x", O_WRONLY | O_CREAT | O_CLOEXEC, 0600, 0);
}

static void c_etc_write_nofollow(void)
{
	call("etc_write_nofollow", AT_FDCWD, "/etc/tracer-monitor-test.d/x", O_WRONLY | O_CREAT | O_CLOEXEC, 0600,
	     RESOLVE_NO_SYMLINKS);
}

static void c_shadow(void)
{
	call("shadow", AT_FDCWD, "/etc/shadow", O_RDONLY | O_CLOEXEC, 0, 0);
}

static void c_ssh_key(void)
{
	call("ssh_key", AT_FDCWD, "/etc/ssh/ssh_host_tracer-test_key", O_RDONLY | O_CLOEXEC, 0, 0);
}

static void c_authorized_keys(void)
{
	call("authorized_keys", AT_FDCWD, "/home/tracer-no-such-user/.ssh/authorized_keys",
	     O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600, 0);
}

static void c_proc_mem(void)
{
	call("proc_mem", AT_FDCWD, "/proc/self/mem", O_RDONLY | O_CLOEXEC, 0, 0);
}

static void c_dev_mem(void)
{
	call("dev_mem", AT_FDCWD, "/dev/mem", O_PATH | O_CLOEXEC, 0, 0);
}

static void c_world_writable(void)
{
	const char *p = tmpfile_path("world-writable");
	mode_t old = umask(0); /* the rule judges the created file's mode, after the umask */
	call("world_writable", AT_FDCWD, p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666, 0);
	umask(old);
}

/* Relative to a directory fd on /etc (opened with openat, which the monitor does not watch); the fd
 * stays open so that /proc/PID/fd/N still names /etc when the event is decoded. */
static void c_dfd_shadow(void)
{
	int d = open("/etc", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (d < 0)
		die("open /etc");
	call("dfd_shadow", d, "shadow", O_RDONLY | O_CLOEXEC, 0, 0);
}

/* Relative to the cwd, which stays /proc/<pid> (in a child, so the other cases keep theirs). */
static void c_cwd_mem(void)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		if (chdir("/proc/self"))
			die("chdir /proc/self");
		call("cwd_mem", AT_FDCWD, "mem", O_RDONLY | O_CLOEXEC, 0, 0);
		linger(1000); /* a zombie's cwd cannot be read: stay alive as long as the parent does */
		_exit(0);
	}
}

/* Relative to a cwd that was removed: the directory cannot be named, a rule could match: unresolved. */
static void c_cwd_deleted(void)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		const char *d = tmpfile_path("gone");
		if (mkdir(d, 0700) || chdir(d) || rmdir(d))
			die("mkdir/chdir/rmdir");
		call("cwd_deleted", AT_FDCWD, "mem", O_RDONLY | O_CLOEXEC, 0, 0);
		linger(1000); /* a zombie's cwd cannot be read: stay alive as long as the parent does */
		_exit(0);
	}
}

static void c_badptr(void)
{
	call("badptr", AT_FDCWD, (const char *)1, O_RDONLY | O_CLOEXEC, 0, 0);
}

static void c_how_badptr(void)
{
	long r = openat2_at(AT_FDCWD, "/etc/hostname", (void *)1);
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "{\"kind\":\"workload\",\"case\":\"how_badptr\",\"pid\":%d,\"tid\":%ld,"
			 "\"ret\":%ld}\n", getpid(), (long)syscall(SYS_gettid), r);
	if (write(1, buf, n) != n)
		die("write");
}

/* The path in a private file mapping nothing has touched: unreadable at entry, recovered at exit. */
static void untouched(const char *name, const char *path)
{
	const char *file = tmpfile_path(name);
	int fd = open(file, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
	char page[PAGE] = {0};
	strcpy(page, path);
	if (fd < 0 || write(fd, page, PAGE) != PAGE)
		die(file);
	char *m = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0); /* no MAP_POPULATE */
	if (m == MAP_FAILED)
		die("mmap");
	close(fd);
	call(name, AT_FDCWD, m, O_RDONLY | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS);
}

static void c_untouched_shadow(void)
{
	untouched("untouched_shadow", "/etc/shadow");
}

/* The path is rewritten to /etc/shadow by another thread while openat2 blocks on a FIFO. */
static char changing[512];
static char fifo[512];
static int caller; /* the thread whose openat2 blocks on the FIFO */

static void *rewriter(void *arg)
{
	(void)arg;
	wait_blocked(caller, SYS_openat2);
	strcpy(changing, "/etc/shadow");
	int fd = open(fifo, O_WRONLY | O_CLOEXEC); /* unblocks the reader */
	if (fd < 0)
		die("open fifo for writing");
	close(fd);
	return NULL;
}

static void c_changed(void)
{
	strcpy(fifo, tmpfile_path("fifo"));
	if (mkfifo(fifo, 0600))
		die("mkfifo");
	strcpy(changing, fifo);
	caller = (int)syscall(SYS_gettid);
	pthread_t t;
	if (pthread_create(&t, NULL, rewriter, NULL))
		die("pthread_create");
	call("changed", AT_FDCWD, changing, O_RDONLY | O_CLOEXEC, 0, 0);
	pthread_join(t, NULL);
}

/* A triggering path and a thread name that a terminal must not interpret. */
static void *escape_thread(void *arg)
{
	(void)arg;
	if (prctl(PR_SET_NAME, "esc\x1b[7m\n[b]"))
		die("prctl");
	call("escape", AT_FDCWD, "/etc/tracer-no-dir/[bold red]x[/]\x1b[31m\nFORGED\xe2\x80\xae", O_WRONLY | O_CREAT, 0600,
	     0);
	return NULL;
}

static void c_escape(void)
{
	pthread_t t;
	if (pthread_create(&t, NULL, escape_thread, NULL) || pthread_join(t, NULL))
		die("pthread");
}

/* The rest of the open family (run with `tracer monitor` watching all of it): one report per call, with
 * the syscall's name. */
static void report(const char *name, const char *sc, long r)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "{\"kind\":\"workload\",\"case\":\"%s\",\"syscall\":\"%s\",\"pid\":%d,"
			 "\"tid\":%ld,\"ret\":%ld}\n", name, sc, getpid(), (long)syscall(SYS_gettid), r);
	if (write(1, buf, n) != n)
		die("write");
	if (r >= 0)
		close((int)r);
}

static long ret(long r)
{
	return r < 0 ? -errno : r;
}

static void c_family(void)
{
	report("f_open_shadow", "open", ret(syscall(SYS_open, "/etc/shadow", O_RDONLY | O_CLOEXEC)));
	int d = open("/etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* stays open: read back from /proc */
	if (d < 0)
		die("open /etc");
	report("f_openat_dfd_shadow", "openat", ret(syscall(SYS_openat, d, "shadow", O_RDONLY | O_CLOEXEC)));
	report("f_openat_passwd", "openat", ret(syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY | O_CLOEXEC)));
	report("f_creat_etc", "creat", ret(syscall(SYS_creat, "/etc/tracer-monitor-test.d/x", 0600)));
	mode_t old = umask(0);
	report("f_creat_world", "creat", ret(syscall(SYS_creat, tmpfile_path("creat-world"), 0666)));
	umask(022);
	report("f_creat_umask", "creat", ret(syscall(SYS_creat, tmpfile_path("creat-umask"), 0666)));
	umask(old);
	report("f_openat_badptr", "openat", ret(syscall(SYS_openat, AT_FDCWD, (const char *)1, O_RDONLY)));
	struct {
		struct file_handle fh;
		unsigned char bytes[MAX_HANDLE_SZ];
	} h = {.fh.handle_bytes = MAX_HANDLE_SZ};
	int mount_id;
	if (name_to_handle_at(AT_FDCWD, "/etc/shadow", &h.fh, &mount_id, 0))
		die("name_to_handle_at");
	report("f_handle_shadow", "open_by_handle_at",
	       ret(syscall(SYS_open_by_handle_at, d, &h.fh, O_RDONLY | O_CLOEXEC)));
	/* DIR/lnk -> /etc/ssh: DIR/lnk/../shadow is /etc/shadow for the kernel, DIR/shadow as text. */
	const char *lnk = tmpfile_path("lnk");
	if (symlink("/etc/ssh", lnk))
		die("symlink");
	char path[600];
	snprintf(path, sizeof(path), "%s/../shadow", lnk);
	report("f_lnk_dotdot_shadow", "openat", ret(syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC)));
}

/* A racing writer: the path is on a page nothing has touched (unreadable at entry); the kernel faults it
 * in, copies DIR/secret-fifo.PID and blocks opening the FIFO; meanwhile another thread rewrites the
 * memory to DIR/harmless-xx.PID, then opens the FIFO for writing. Read again at exit, the path says
 * harmless; the kernel opened the secret. */
static char *race_mem;
static char race_fifo[512], race_harmless[512];

static void *race_writer(void *arg)
{
	(void)arg;
	wait_blocked(caller, SYS_openat2);
	strcpy(race_mem, race_harmless);
	int fd = open(race_fifo, O_WRONLY | O_CLOEXEC); /* unblocks the reader */
	if (fd < 0)
		die("open fifo for writing");
	close(fd);
	return NULL;
}

static void c_race(void)
{
	strcpy(race_fifo, tmpfile_path("secret-fifo"));
	strcpy(race_harmless, tmpfile_path("harmless-xx"));
	if (mkfifo(race_fifo, 0600))
		die("mkfifo");
	const char *file = tmpfile_path("race-page");
	int fd = open(file, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
	char page[PAGE] = {0};
	strcpy(page, race_fifo);
	if (fd < 0 || write(fd, page, PAGE) != PAGE)
		die(file);
	race_mem = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0); /* not touched */
	if (race_mem == MAP_FAILED)
		die("mmap");
	close(fd);
	caller = (int)syscall(SYS_gettid);
	pthread_t t;
	if (pthread_create(&t, NULL, race_writer, NULL))
		die("pthread_create");
	call("race", AT_FDCWD, race_mem, O_RDONLY | O_CLOEXEC, 0, 0);
	pthread_join(t, NULL);
}

/* FLOOD_N (default 1000) identical openat2 calls on /etc/shadow, then as many with a bad path pointer:
 * one report each for the first and the last call of each kind. */
static void c_flood(void)
{
	long n = getenv("FLOOD_N") ? atol(getenv("FLOOD_N")) : 1000;
	struct open_how how = {.flags = O_RDONLY | O_CLOEXEC};
	for (long i = 0; i < n; i++) {
		long r = openat2_at(AT_FDCWD, "/etc/shadow", &how);
		if (r >= 0)
			close((int)r);
		if (i == 0 || i == n - 1)
			report(i ? "flood_shadow_last" : "flood_shadow_first", "openat2", r);
	}
	for (long i = 0; i < n; i++) {
		long r = openat2_at(AT_FDCWD, (const char *)1, &how);
		if (i == 0 || i == n - 1)
			report(i ? "flood_badptr_last" : "flood_badptr_first", "openat2", r);
	}
}

/* Calls the default policy must let pass. */
static void c_benign(void)
{
	call("b_hostname", AT_FDCWD, "/etc/hostname", O_RDONLY | O_CLOEXEC, 0, 0);
	call("b_passwd", AT_FDCWD, "/etc/passwd", O_RDONLY | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS);
	const char *p = tmpfile_path("benign");
	call("b_create", AT_FDCWD, p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644, 0);
	call("b_tmpfile", AT_FDCWD, dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600, 0);
	int d = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (d < 0)
		die(dir);
	call("b_dfd_read", d, strrchr(p, '/') + 1, O_RDONLY | O_CLOEXEC, 0, 0);
	if (chdir(dir))
		die("chdir");
	call("b_cwd_read", AT_FDCWD, strrchr(p, '/') + 1, O_RDONLY | O_CLOEXEC, 0, 0);
	call("b_missing", AT_FDCWD, "/nonexistent/tracer-monitor", O_RDONLY | O_CLOEXEC, 0, 0);
	call("b_proc_status", AT_FDCWD, "/proc/self/status", O_RDONLY | O_CLOEXEC, 0, 0);
	untouched("b_untouched", "/etc/hostname");
}

static const struct {
	const char *name;
	void (*fn)(void);
} CASES[] = {
	{"etc_write_follow", c_etc_write_follow}, {"etc_write_nofollow", c_etc_write_nofollow},
	{"shadow", c_shadow}, {"ssh_key", c_ssh_key}, {"authorized_keys", c_authorized_keys},
	{"proc_mem", c_proc_mem}, {"dev_mem", c_dev_mem}, {"world_writable", c_world_writable},
	{"dfd_shadow", c_dfd_shadow}, {"cwd_mem", c_cwd_mem}, {"cwd_deleted", c_cwd_deleted},
	{"badptr", c_badptr}, {"how_badptr", c_how_badptr}, {"untouched_shadow", c_untouched_shadow},
	{"changed", c_changed}, {"escape", c_escape}, {"benign", c_benign}, {"family", c_family}, {"flood", c_flood}, {"race", c_race},
};
#define NCASES (sizeof(CASES) / sizeof(CASES[0]))

int main(int argc, char **argv)
{
	if (getenv("WORKLOAD_DIR"))
		dir = getenv("WORKLOAD_DIR");
	for (int i = 1; i < argc; i++) {
		int found = 0;
		for (size_t k = 0; k < NCASES; k++) {
			int all = !strcmp(argv[i], "triggers") && strcmp(CASES[k].name, "benign") &&
				  strcmp(CASES[k].name, "escape") && strcmp(CASES[k].name, "family") &&
				  strcmp(CASES[k].name, "flood") &&
				  strcmp(CASES[k].name, "race");
			if (all || !strcmp(argv[i], CASES[k].name)) {
				CASES[k].fn();
				found = 1;
			}
		}
		if (!found) {
			fprintf(stderr, "unknown case %s\n", argv[i]);
			return 2;
		}
	}
	linger(1000);
	while (wait(NULL) > 0)
		;
	for (int i = 0; i < nfiles; i++) {
		unlink(files[i]);
		rmdir(files[i]);
	}
	return getenv("EXIT_CODE") ? atoi(getenv("EXIT_CODE")) : 0;
}
