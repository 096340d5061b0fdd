/* The one record layout shared by bpf/trace.bpf.c and the Python decoder.
 *
 * tracer/layout.py parses this file (the #defines and the structs below), so keep to the subset it
 * understands: `#define NAME <integer>` and structs of __u8/__s8/__u16/__s16/__u32/__s32/__u64/__s64/
 * char fields and fixed arrays, naturally aligned with explicit padding (layout.py refuses implicit
 * padding; tests/test_layout.py checks every offset against the C compiler's).
 */
#ifndef TRACER_RECORD_H
#define TRACER_RECORD_H

#define MAX_ARGS 6
#define MAX_READS 4
#define TASK_COMM_LEN 16

/* Bytes read from user memory. A string read takes up to STR_CAP bytes including its NUL; a longer
 * string is stored cut and flagged truncated. Structs are read whole (one helper call), so a struct
 * is either complete or unknown, never a mixture of real bytes and zeros. */
#define STR_CAP 512
#define HOW_CAP 256
#define SOCKADDR_CAP 128
#define READ_CAP 512
#define DATA_CAP 2048

/* Record types (first field of every record). */
#define REC_SYSCALL 1

/* What to read for one pointer argument (struct sc_conf.rd_kind). */
#define RK_NONE 0
#define RK_STR 1          /* NUL-terminated string */
#define RK_OPEN_HOW 2     /* struct open_how, size from the argument rd_lenarg (usize) */
#define RK_SOCKADDR 3     /* struct sockaddr, size from the argument rd_lenarg */
#define RK_SOCKADDR_OUT 4 /* sockaddr filled by the kernel: read at exit, size from *(int *)rd_lenarg */
#define RK_BUF 5          /* fixed-size buffer of rd_size bytes */
#define RK_BUF_LEN 6      /* buffer, size from the argument rd_lenarg, at most rd_size */
#define RK_STRV 7         /* NULL-terminated array of strings (execve argv/envp): struct strv below;
			   * rd_lenarg says which area of the new mm holds the kernel's copy (0 args, 1 env) */

/* An RK_STRV read at entry (and at exit of a failed exec): struct strv, then per element a struct
 * strv_elem followed by its len bytes (no NUL). At exit of a successful exec the exit bytes are instead
 * the kernel's copy in the new process's memory (mm->arg_start..arg_end or env_start..env_end), NUL-separated,
 * RS_TRUNC when cut. Bounded: STRV_MAX elements, STRV_ELEM_CAP bytes each, and the record's data area. */
#define STRV_MAX 48
#define STRV_ELEM_CAP 256

/* Outcome of one read (struct read_slot.enter_status / exit_status). */
#define RS_NONE 0     /* not attempted */
#define RS_OK 1       /* all requested bytes read */
#define RS_FAULT 2    /* the helper failed: errno in *_err, no bytes kept */
#define RS_TRUNC 3    /* string longer than STR_CAP (or struct larger than its cap): prefix kept */
#define RS_NULL 4     /* the pointer was NULL: nothing to read, and that is the value */
#define RS_NOROOM 5   /* the record's data area was full: not read */
#define RS_SKIPPED 6  /* deliberately not read (e.g. at exit of a successful execve: new memory) */

/* struct sys_record.flags */
#define RF_NORETURN 1 /* emitted at entry: the syscall does not return (exit, exit_group) */
#define RF_ACTIVE 2   /* in-flight state, between sys_enter and sys_exit */
#define RF_EXIT_READS 4 /* exit re-reads were attempted (recovery on) */
#define RF_SLEEPABLE 8  /* a sleepable program read some slot at entry (read_slot.src says which) */
#define RF_OPENED 16    /* a struct kfile (the file the kernel installed at fd = ret) is at data[xoff] */

/* struct read_slot.src: who made the entry read (0: the nofault sys_enter program) */
#define RSRC_FAULTED_IN 1 /* the nofault read failed; a sleepable copy faulted the page(s) in */
#define RSRC_SLEEPABLE 2  /* read by a sleepable program (tp.s entry program or fentry.s) */

/* struct sc_conf.flags */
#define SC_TRACED 1
#define SC_NORETURN 2
#define SC_EXEC 4 /* replaces the address space on success: no exit re-read when ret == 0 */
#define SC_OPEN 8 /* returns a new fd on success: read the kernel's struct file at fd = ret (struct kfile) */

/* The kernel's opened file (struct kfile), walked at sys_exit from current->files->fdt->fd[ret] with
 * struct offsets from the running kernel's BTF (tracer/kstructs.py passes them as -DKO_* defines). The
 * path's components follow the struct in data[], leaf first, each NUL-terminated (names hold neither NUL
 * nor '/'); at most KF_DEPTH steps (components and mount crossings), each name at most KF_NAME bytes. */
#define KF_DEPTH 40
#define KF_NAME 256 /* NAME_MAX + 1 */
/* struct kfile.status */
#define KF_OK 1          /* walked up to the process's root directory: the path is whole */
#define KF_TRUNC 2       /* KF_DEPTH steps or the record's data area ran out first: a suffix only */
#define KF_UNREACHABLE 3 /* the chain ended elsewhere (outside the process root, detached mount, pseudo fs) */
#define KF_NOFILE 4      /* no file at fd = ret (already closed by another thread) */
#define KF_FAULT 5       /* a kernel read failed: kfile.err says which step */
#define KF_NOROOM 6      /* the record's data area had no room for the struct */

/* struct tracer_conf.flags: filters applied in the kernel */
#define CF_PID 1
#define CF_TID 2
#define CF_UID 4
#define CF_COMM 8
#define CF_FOLLOW 16  /* add children of traced processes to the pid set */
#define CF_RECOVER 32 /* re-read pointer arguments at sys_exit */
#define CF_OFF 64     /* not tracing (until every program is attached, and from the end): the programs
		       * change nothing, so that tracing starts and stops at one instant for all of them */

/* per-CPU counters (stats map index). Each call the programs see entering ends in exactly one of:
 * emitted, submit_fail, state_full, no_exit, or still in flight when tracing stops
 * (tracer/accounting.py). */
#define ST_EMITTED 0
#define ST_NO_STATE 1    /* a traced thread's sys_exit without entry state: the call began before tracing
			  * did (or before the task existed: a child's return from fork), or its entry is
			  * in state_full. Not a lost call of its own. */
#define ST_STATE_FULL 2  /* the in-flight table was full at entry: the call's record cannot be built */
#define ST_SUBMIT_FAIL 3 /* the record could not be sent: ring full or another error (every failed output) */
#define ST_NO_EXIT 4     /* in-flight state dropped without its sys_exit: replaced by a newer entry, a
			  * sys_exit of another syscall, or the thread exited */
#define ST_RING_FULL 5   /* of ST_SUBMIT_FAIL, the outputs the BPF ring buffer refused (-EAGAIN): no room */
#define NSTATS 6

struct read_slot {
	__u8 arg;          /* argument index 0..5 */
	__u8 kind;         /* RK_* */
	__u8 enter_status; /* RS_* */
	__u8 exit_status;  /* RS_*; RS_NONE when no exit read was made */
	__s16 enter_err;   /* negative errno from the helper, or 0 */
	__s16 exit_err;
	__u16 enter_off;   /* offset of the bytes in data[] */
	__u16 enter_len;   /* bytes kept (strings: without the NUL) */
	__u16 exit_off;
	__u16 exit_len;
	__u8 exit_same;    /* exit read equals the entry read: its bytes are not repeated */
	__u8 src;          /* RSRC_* */
	__u16 pad1;
	__u32 want;        /* bytes the argument asked for (struct size, usize, addrlen) */
};

struct sys_record {
	__u16 type;   /* REC_SYSCALL */
	__u16 size;   /* bytes of this record that were sent: header and used data */
	__u16 nr;     /* syscall number */
	__u8 nreads;
	__u8 flags;   /* RF_* */
	__u32 pid;    /* tgid */
	__u32 tid;
	__u32 uid;
	__u32 xoff;   /* RF_OPENED: offset of the struct kfile in data[] (8-aligned, after the reads) */
	__u64 ts_enter; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u64 ts_exit;
	__s64 ret;
	__u64 args[MAX_ARGS];
	char comm[TASK_COMM_LEN];
	struct read_slot reads[MAX_READS];
	__u8 data[DATA_CAP];
};

/* bpf/trace.bpf.c sends each sys_record on a BPF ring buffer (one, shared by the CPUs) behind this header:
 * the CPU that sent it (a per-CPU perf ring said that by being the CPU's ring). */
struct ring_head {
	__u32 cpu;
	__u32 pad;
};

struct strv {
	__u16 n;      /* elements that follow */
	__u8 status;  /* RS_OK: the NULL that ends the array was read after them; RS_TRUNC: cut (STRV_MAX, room);
		       * RS_FAULT: the pointer of element n could not be read (err) */
	__u8 pad;
	__s16 err;
	__u16 size;   /* bytes of this struct and its elements */
};

struct strv_elem {
	__u8 status;  /* RS_OK, RS_TRUNC (longer than STRV_ELEM_CAP - 1), RS_FAULT (err) */
	__u8 pad;
	__s16 err;
	__u16 len;
};

struct kfile {
	__u64 ino;      /* inode.i_ino */
	__u32 dev;      /* super_block.s_dev (kernel dev_t: major << 20 | minor) */
	__u32 f_flags;  /* file.f_flags (the open flags as the kernel kept them) */
	__u16 mode;     /* inode.i_mode */
	__u8 status;    /* KF_* */
	__u8 nparts;    /* path components that follow, leaf first */
	__u16 size;     /* bytes of this struct and its components */
	__s16 err;      /* KF_FAULT: the failed step (1 files, 2 fdt, 3 fd array, 4 file, 5 inode, 6 walk) */
};

struct sc_conf {
	__u8 flags;  /* SC_* */
	__u8 nargs;
	__u8 nreads;
	__u8 pad0;
	__u8 rd_arg[MAX_READS];
	__u8 rd_kind[MAX_READS];
	__u8 rd_lenarg[MAX_READS];
	__u16 rd_size[MAX_READS]; /* cap (or fixed size) in bytes */
};

struct tracer_conf {
	__u32 flags; /* CF_* */
	__u32 self_pid; /* never trace the tracer itself */
	__u32 uid;
	__u32 pad0;
	char comm[TASK_COMM_LEN];
};

#endif
