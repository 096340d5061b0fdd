/* Calls whose arguments the entry read cannot see and whose memory changes after the kernel's own copy,
 * for tests/test_truth_live.py: what the kernel used versus what memory holds after the call.
 *
 * Usage: truth_cases CASE... ; temporary files go to $WORKLOAD_DIR (default /tmp). Arguments are placed in
 * pages no one has touched (a one-page memfd mapped privately: the page is in the page cache, not in this
 * process's page table, so the tracer's nofault entry read fails and the kernel's copy faults it in).
 * One JSON line per call on stdout: {"kind":"workload","case":...,"pid":...,"ret":R,...}, R = -errno on
 * failure, plus where the arguments were and what they held before and after the call.
 *
 *   fifo_race [nofollow]  openat(AT_FDCWD, path) of a FIFO; while the open blocks, another thread rewrites
 *                         the path to a decoy and then opens the FIFO for writing (which unblocks it).
 *   untouched_abs         openat of a regular file by absolute path (nothing changes): dev/ino/mode reported.
 *   untouched_rel         openat(dirfd, "name") of the same file by a relative path.
 *   unix_race             connect(AF_UNIX) to a listener whose backlog is full: blocks after the kernel
 *                         copied the address; another thread rewrites sun_path, then accepts (unblocks it).
 *   accept4_untouched_len accept4 whose *addrlen is on an untouched page (the peer buffer is not).
 *   exec_fail_untouched   execve of a file that is not a program (ENOEXEC), argv/envp arrays and strings on
 *                         untouched pages: the kernel copies them before it fails (a missing file would fail
 *                         before: since 6.x the file is opened first, so nothing of argv would be read).
 *   exec_ok_untouched     the same layout, execve("/bin/true") in a child (reported with the child's pid).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "workload.h"

#define U(p) ((unsigned long)(p))
#define R(r) ((r) < 0 ? -errno : (r))

static const char *dir = "/tmp";

/* len bytes at the start of a page that is in no page table of this process yet (read/write, private). */
static char *untouched(const void *bytes, size_t len)
{
	int fd = memfd_create("truth", MFD_CLOEXEC);
	if (fd < 0 || write(fd, bytes, len) != (ssize_t)len || ftruncate(fd, PAGE))
		die("memfd");
	char *m = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		die("mmap");
	close(fd);
	if (mapped(m))
		die("precondition: the page is already mapped");
	return m;
}

/* --- openat of a FIFO, rewritten while it blocks ----------------------------------------------------- */

static char fifo_path[256], decoy_path[256];
static char *racing; /* the caller's path buffer */
static int caller; /* the racing call's thread */

static void *fifo_rewriter(void *arg)
{
	(void)arg;
	wait_blocked(caller, SYS_openat); /* it has copied the path and is blocked in fifo_open() */
	memcpy(racing, decoy_path, strlen(decoy_path) + 1);
	int fd = open(fifo_path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die("open fifo for writing");
	close(fd);
	return NULL;
}

static void case_fifo_race(int nofollow)
{
	snprintf(fifo_path, sizeof(fifo_path), "%s/secret-fifo.%d", dir, getpid());
	snprintf(decoy_path, sizeof(decoy_path), "%s/harmless-xx.%d", dir, getpid());
	unlink(fifo_path);
	if (mkfifo(fifo_path, 0600))
		die("mkfifo");
	int dfd = open(decoy_path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644); /* the decoy exists too */
	if (dfd < 0)
		die(decoy_path);
	close(dfd);
	racing = untouched(fifo_path, strlen(fifo_path) + 1);
	caller = (int)syscall(SYS_gettid);
	pthread_t t;
	if (pthread_create(&t, NULL, fifo_rewriter, NULL))
		die("pthread_create");
	int flags = O_RDONLY | O_CLOEXEC | (nofollow ? O_NOFOLLOW : 0);
	int r = openat(AT_FDCWD, racing, flags);
	int ret = R(r);
	pthread_join(t, NULL);
	struct stat st;
	if (r < 0 || fstat(r, &st))
		die("openat fifo");
	out("{\"kind\":\"workload\",\"case\":\"%s\",\"pid\":%d,\"filename\":%lu,\"flags\":%d,\"ret\":%d,"
	    "\"fifo\":\"%s\",\"decoy\":\"%s\",\"after\":\"%s\",\"dev\":\"%u:%u\",\"ino\":%lu,\"mode\":%u}",
	    nofollow ? "fifo_race_nofollow" : "fifo_race", getpid(), U(racing), flags, ret, fifo_path, decoy_path,
	    racing, major(st.st_dev), minor(st.st_dev), (unsigned long)st.st_ino, st.st_mode);
	close(r);
	unlink(fifo_path);
	unlink(decoy_path);
}

static void case_fifo_race_follow(void)
{
	case_fifo_race(0);
}

static void case_fifo_race_nofollow(void)
{
	case_fifo_race(1);
}

/* --- a regular file by absolute and relative path, from untouched pages -------------------------------- */

static void opened_report(const char *name, const char *arg, int dfd, int r)
{
	struct stat st;
	if (r < 0 || fstat(r, &st))
		die("openat");
	out("{\"kind\":\"workload\",\"case\":\"%s\",\"pid\":%d,\"filename\":%lu,\"dfd\":%d,\"ret\":%d,"
	    "\"dev\":\"%u:%u\",\"ino\":%lu,\"mode\":%u}",
	    name, getpid(), U(arg), dfd, r, major(st.st_dev), minor(st.st_dev), (unsigned long)st.st_ino, st.st_mode);
	close(r);
}

static void case_untouched_abs(void)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/plain.%d", dir, getpid());
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0640);
	if (fd < 0)
		die(path);
	close(fd);
	char *m = untouched(path, strlen(path) + 1);
	opened_report("untouched_abs", m, AT_FDCWD, openat(AT_FDCWD, m, O_RDONLY | O_CLOEXEC));
	unlink(path);
}

static void case_untouched_rel(void)
{
	char name[64], path[256];
	snprintf(name, sizeof(name), "plain-rel.%d", getpid());
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		die(path);
	close(fd);
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		die(dir);
	char *m = untouched(name, strlen(name) + 1);
	opened_report("untouched_rel", m, dfd, openat(dfd, m, O_RDONLY | O_CLOEXEC));
	close(dfd);
	unlink(path);
}

/* --- connect(AF_UNIX) blocked on a full backlog, address rewritten meanwhile ---------------------------- */

static struct sockaddr_un *racing_addr;
static char decoy_sun[108];
static int listener;

static void *unix_rewriter(void *arg)
{
	(void)arg;
	wait_blocked(caller, SYS_connect); /* it has copied the address, sleeps in unix_wait_for_peer() */
	memcpy(racing_addr->sun_path, decoy_sun, strlen(decoy_sun) + 1);
	int a = accept(listener, NULL, NULL); /* frees the backlog: connect proceeds */
	if (a < 0)
		die("accept");
	close(a);
	return NULL;
}

static void case_unix_race(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/listen.%d", dir, getpid());
	snprintf(decoy_sun, sizeof(decoy_sun), "%s/decoy-.%d", dir, getpid()); /* same length */
	unlink(sa.sun_path);
	listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&sa, sizeof(sa)) || listen(listener, 0))
		die("listen");
	int first = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); /* fills the backlog of 0 (+1) */
	if (first < 0 || connect(first, (struct sockaddr *)&sa, sizeof(sa)))
		die("first connect");
	socklen_t len = offsetof(struct sockaddr_un, sun_path) + strlen(sa.sun_path) + 1;
	racing_addr = (struct sockaddr_un *)untouched(&sa, len);
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	caller = (int)syscall(SYS_gettid);
	pthread_t t;
	if (c < 0 || pthread_create(&t, NULL, unix_rewriter, NULL))
		die("socket/pthread_create");
	int r = connect(c, (struct sockaddr *)racing_addr, len);
	int ret = R(r);
	pthread_join(t, NULL);
	out("{\"kind\":\"workload\",\"case\":\"unix_race\",\"pid\":%d,\"addr\":%lu,\"addrlen\":%u,\"fd\":%d,"
	    "\"ret\":%d,\"path\":\"%s\",\"decoy\":\"%s\",\"after\":\"%s\"}",
	    getpid(), U(racing_addr), len, c, ret, sa.sun_path, decoy_sun, racing_addr->sun_path);
	close(c);
	close(first);
	close(listener);
	unlink(sa.sun_path);
}

/* --- accept4 with *addrlen on an untouched page ------------------------------------------------------- */

static void case_accept4_untouched_len(void)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in la = {.sin_family = AF_INET};
	la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t lalen = sizeof(la);
	if (l < 0 || bind(l, (struct sockaddr *)&la, sizeof(la)) || listen(l, 4) ||
	    getsockname(l, (struct sockaddr *)&la, &lalen))
		die("listen");
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&la, sizeof(la)))
		die("connect");
	struct sockaddr_in me;
	socklen_t melen = sizeof(me);
	if (getsockname(c, (struct sockaddr *)&me, &melen))
		die("getsockname");
	struct sockaddr_storage peer;
	memset(&peer, 0xee, sizeof(peer));
	socklen_t size = sizeof(peer);
	socklen_t *lenp = (socklen_t *)untouched(&size, sizeof(size));
	int a = accept4(l, (struct sockaddr *)&peer, lenp, SOCK_CLOEXEC);
	int ret = R(a);
	out("{\"kind\":\"workload\",\"case\":\"accept4_untouched_len\",\"pid\":%d,\"addr\":%lu,\"addrlen_ptr\":%lu,"
	    "\"ret\":%d,\"addrlen_after\":%u,\"client_port\":%d}",
	    getpid(), U(&peer), U(lenp), ret, *lenp, ntohs(me.sin_port));
	if (a >= 0)
		close(a);
	close(c);
	close(l);
}

/* --- execve with argv/envp (array and strings) on untouched pages --------------------------------------- */

static const char *const EXEC_ARGS[] = {"/bin/true", "arg-one", "arg two", NULL};
static const char *const EXEC_ENV[] = {"TRUTH=1", NULL};

/* filename, argv and envp laid out in a two-page memfd mapped where the pointers say (MAP_FIXED at an
 * address reserved first): nothing of it is in the page table before the exec. */
static char *exec_layout(const char *filename, char ***argv, char ***envp)
{
	char *at = mmap(NULL, 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (at == MAP_FAILED || munmap(at, 2 * PAGE))
		die("reserve");
	char buf[2 * PAGE] = {0};
	char **av = (char **)buf, **ev = (char **)(buf + 64);
	size_t pos = PAGE; /* strings on the second page */
	strcpy(buf + pos, filename);
	pos += strlen(filename) + 1;
	for (int i = 0; EXEC_ARGS[i]; i++) {
		av[i] = at + pos;
		strcpy(buf + pos, EXEC_ARGS[i]);
		pos += strlen(EXEC_ARGS[i]) + 1;
	}
	for (int i = 0; EXEC_ENV[i]; i++) {
		ev[i] = at + pos;
		strcpy(buf + pos, EXEC_ENV[i]);
		pos += strlen(EXEC_ENV[i]) + 1;
	}
	int fd = memfd_create("truth-exec", MFD_CLOEXEC);
	if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
		die("memfd");
	char *m = mmap(at, 2 * PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
	if (m != at)
		die("mmap fixed");
	close(fd);
	if (mapped(m) || mapped(m + PAGE))
		die("precondition: the exec arguments are already mapped");
	*argv = (char **)m;
	*envp = (char **)(m + 64);
	return m + PAGE;
}

static void exec_report(const char *name, pid_t pid, char **argv, char **envp, int ret)
{
	out("{\"kind\":\"workload\",\"case\":\"%s\",\"pid\":%d,\"argv\":%lu,\"envp\":%lu,\"ret\":%d}", name, pid,
	    U(argv), U(envp), ret);
}

static void case_exec_fail_untouched(void)
{
	/* Next to this program (its directory allows exec): executable, but no binary format takes it. */
	char self[512], path[600];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		die("readlink /proc/self/exe");
	self[n] = 0;
	*strrchr(self, '/') = 0;
	snprintf(path, sizeof(path), "%s/truth-noexec.%d", self, getpid());
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0755);
	if (fd < 0 || write(fd, "not a program\n", 14) != 14 || close(fd))
		die(path);
	char **argv, **envp;
	char *file = exec_layout(path, &argv, &envp);
	int r = execve(file, argv, envp);
	unlink(path);
	exec_report("exec_fail_untouched", getpid(), argv, envp, R(r));
}

static void case_exec_ok_untouched(void)
{
	char **argv, **envp;
	char *file = exec_layout("/bin/true", &argv, &envp);
	int gate[2];
	if (pipe(gate))
		die("pipe");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		char go;
		close(gate[1]);
		if (read(gate[0], &go, 1) != 1) /* the parent reports first: its line precedes /bin/true's exit */
			_exit(98);
		execve(file, argv, envp);
		_exit(97);
	}
	close(gate[0]);
	exec_report("exec_ok_untouched", pid, argv, envp, 0);
	if (write(gate[1], "g", 1) != 1)
		die("gate");
	close(gate[1]);
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die("/bin/true did not run");
}

static const struct {
	const char *name;
	void (*fn)(void);
} CASES[] = {
	{"fifo_race", case_fifo_race_follow},
	{"fifo_race_nofollow", case_fifo_race_nofollow},
	{"untouched_abs", case_untouched_abs},
	{"untouched_rel", case_untouched_rel},
	{"unix_race", case_unix_race},
	{"accept4_untouched_len", case_accept4_untouched_len},
	{"exec_fail_untouched", case_exec_fail_untouched},
	{"exec_ok_untouched", case_exec_ok_untouched},
};

int main(int argc, char **argv)
{
	if (getenv("WORKLOAD_DIR"))
		dir = getenv("WORKLOAD_DIR");
	for (int i = 1; i < argc; i++) {
		size_t k = 0;
		while (k < sizeof(CASES) / sizeof(CASES[0]) && strcmp(argv[i], CASES[k].name))
			k++;
		if (k == sizeof(CASES) / sizeof(CASES[0])) {
			fprintf(stderr, "unknown case %s\n", argv[i]);
			return 2;
		}
		CASES[k].fn();
	}
	linger(300);
	return 0;
}
