/* Syscall tracing: one record per syscall, built in place between sys_enter and sys_exit.
 *
 * sys_enter_* (any syscall; one program per argument count so that context reads stay inside each
 * tracepoint's record): filter, copy arguments, read pointer arguments as sc_conf says, keep the
 * state per thread. sys_exit_*: add the return value, re-read the pointers (recovery of failed entry
 * reads; detection of memory changed during the call), send the record on the perf buffer.
 *
 * Layout and constants: record.h (shared with tracer/layout.py). Compiled by bcc at run time.
 */
#include "record.h"

#ifndef INFLIGHT_ENTRIES
#define INFLIGHT_ENTRIES 8192
#endif

/* The first fields of every syscalls:sys_enter_* / sys_exit_* record (see their tracefs format). */
struct sc_enter_ctx {
	__u64 common;
	int nr;
	int pad;
	__u64 args[MAX_ARGS];
};

struct sc_exit_ctx {
	__u64 common;
	int nr;
	int pad;
	long ret;
};

/* v clamped to max, in a form the verifier sees (the compiler may otherwise test a copy of v). */
#define CLAMP(v, max) asm volatile("if %[x] <= %[m] goto +1; %[x] = %[m]" : [x] "+r"(v) : [m] "i"(max))

BPF_PERF_OUTPUT(events);
BPF_ARRAY(conf, struct tracer_conf, 1);
BPF_ARRAY(sc_conf, struct sc_conf, 1024);
BPF_HASH(pids, __u32, __u8, 65536);
BPF_HASH(tids, __u32, __u8, 1024);
BPF_PERCPU_ARRAY(stats, __u64, NSTATS);
BPF_PERCPU_ARRAY(zero_rec, struct sys_record, 1);
/* Per-thread in-flight records, reused in place: only a thread's first traced syscall pays for the
 * insert; LRU eviction bounds the memory left by exited threads. */
BPF_TABLE("lru_hash", __u32, struct sys_record, inflight, INFLIGHT_ENTRIES);

static __always_inline void count(int idx)
{
	__u64 *c = stats.lookup(&idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline int wanted(struct tracer_conf *c, __u32 pid, __u32 tid)
{
	if (pid == c->self_pid)
		return 0;
	if ((c->flags & CF_PID) && !pids.lookup(&pid))
		return 0;
	if ((c->flags & CF_TID) && !tids.lookup(&tid))
		return 0;
	if ((c->flags & CF_UID) && (__u32)bpf_get_current_uid_gid() != c->uid)
		return 0;
	if (c->flags & CF_COMM) {
		char comm[TASK_COMM_LEN] = {};
		bpf_get_current_comm(comm, sizeof(comm));
		__u64 *a = (__u64 *)comm, *b = (__u64 *)c->comm;
		if (a[0] != b[0] || a[1] != b[1])
			return 0;
	}
	return 1;
}

/* Read one argument at *pos in r->data. Returns the status; sets *err and *len. Structs are read with
 * one helper call so that a struct is never half real and half zero. */
static __always_inline int read_arg(struct sys_record *r, __u32 at, __u8 kind, __u64 ptr, __u32 want,
				    __u32 cap, __s16 *err, __u16 *len)
{
	*err = 0;
	*len = 0;
	if (!ptr)
		return RS_NULL;
	if (at > DATA_CAP - READ_CAP - 1)
		return RS_NOROOM;
	__u64 pos = at;
	CLAMP(pos, DATA_CAP - READ_CAP - 1);
	if (kind == RK_STR) {
		int n = bpf_probe_read_user_str(&r->data[pos], STR_CAP, (void *)ptr);
		if (n < 0) {
			*err = n;
			return RS_FAULT;
		}
		*len = n > 0 ? n - 1 : 0;
		if (n == STR_CAP) {
			/* Filled the buffer: longer unless the byte at the cap is the NUL. */
			char next = 0;
			if (bpf_probe_read_user(&next, 1, (void *)(ptr + STR_CAP - 1)) || next)
				return RS_TRUNC;
		}
		return RS_OK;
	}
	__u64 n = want;
	int st = RS_OK;
	if (cap > READ_CAP)
		cap = READ_CAP;
	if (n > cap) {
		n = cap;
		st = RS_TRUNC;
	}
	CLAMP(n, READ_CAP);
	int e = bpf_probe_read_user(&r->data[pos], n, (void *)ptr);
	if (e < 0) {
		*err = e;
		return RS_FAULT;
	}
	*len = n;
	return st;
}

/* Size the argument asks for, for the kinds whose size comes from another argument. */
static __always_inline __u32 want_size(struct sc_conf *sc, int i, __u64 *args)
{
	__u8 kind = sc->rd_kind[i];
	if (kind == RK_BUF)
		return sc->rd_size[i];
	__u8 la = sc->rd_lenarg[i];
	if (la >= MAX_ARGS)
		return 0;
	__u64 v = args[la];
	if (kind == RK_SOCKADDR_OUT) {
		int ulen = 0;
		if (!v || bpf_probe_read_user(&ulen, sizeof(ulen), (void *)v) || ulen < 0)
			return 0;
		v = ulen;
	}
	if (kind == RK_SOCKADDR && (int)v < 0)
		return 0;
	return v > 0xffffffffULL ? 0xffffffff : (__u32)v;
}

static __always_inline void emit(void *ctx, struct sys_record *r, __u32 pos)
{
	__u64 size = offsetof(struct sys_record, data) + pos;
	CLAMP(size, sizeof(struct sys_record));
	r->size = size;
	r->flags &= ~RF_ACTIVE;
	if (events.perf_submit(ctx, r, size) == 0)
		count(ST_EMITTED);
	else
		count(ST_SUBMIT_FAIL);
}

/* The per-slot steps below are called with constant slot numbers (no loops over slots): the verifier
 * then sees constant offsets into the record and into sc_conf. */
static __always_inline __u32 slot_end(struct sys_record *r, int k, __u32 end)
{
	if (k >= r->nreads)
		return end;
	struct read_slot *s = &r->reads[k];
	if (s->enter_off + s->enter_len + 1 > end)
		end = s->enter_off + s->enter_len + 1;
	if (s->exit_status != RS_NONE && !s->exit_same && s->exit_off + s->exit_len + 1 > end)
		end = s->exit_off + s->exit_len + 1;
	return end;
}

static __always_inline __u32 data_end(struct sys_record *r)
{
	__u32 end = 0;
	end = slot_end(r, 0, end);
	end = slot_end(r, 1, end);
	end = slot_end(r, 2, end);
	end = slot_end(r, 3, end);
	return end;
}

static __always_inline void enter_slot(struct sys_record *r, struct sc_conf *sc, __u64 *args, int k)
{
	if (k >= sc->nreads)
		return;
	/* Positions are recomputed from the record rather than carried in registers: the verifier
	 * then sees the same state after every branch of a slot and prunes, instead of multiplying. */
	__u32 pos = data_end(r);
	r->nreads = k + 1;
	struct read_slot *s = &r->reads[k];
	__u8 a = sc->rd_arg[k];
	__u8 kind = sc->rd_kind[k];
	s->arg = a;
	s->kind = kind;
	s->exit_status = RS_NONE;
	s->exit_err = 0;
	s->exit_off = 0;
	s->exit_len = 0;
	s->exit_same = 0;
	s->enter_off = pos;
	s->enter_len = 0;
	s->enter_err = 0;
	s->want = 0;
	s->enter_status = RS_NONE;
	if (a >= MAX_ARGS)
		return;
	if (kind == RK_SOCKADDR_OUT) {
		/* The caller's buffer size: the kernel copies at most this much but reports the full
		 * address length, so the exit read must not go past it. */
		s->want = want_size(sc, k, args);
		return;
	}
	s->want = kind == RK_STR ? 0 : want_size(sc, k, args);
	s->enter_status = read_arg(r, pos, kind, args[a], s->want, sc->rd_size[k], &s->enter_err,
				   &s->enter_len);
}

static __always_inline int handle_enter(void *ctx, int nr, __u64 *args)
{
	__u32 zero = 0;
	if (nr < 0 || nr >= 1024)
		return 0;
	struct tracer_conf *c = conf.lookup(&zero);
	struct sc_conf *sc = sc_conf.lookup((__u32 *)&nr);
	if (!c || !sc || !(sc->flags & SC_TRACED))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32, tid = (__u32)id;
	if (!wanted(c, pid, tid))
		return 0;

	struct sys_record *r = inflight.lookup(&tid);
	if (!r) {
		struct sys_record *z = zero_rec.lookup(&zero);
		if (!z)
			return 0;
		inflight.update(&tid, z);
		r = inflight.lookup(&tid);
		if (!r) {
			count(ST_STATE_FULL);
			return 0;
		}
	}
	r->type = REC_SYSCALL;
	r->nr = nr;
	r->flags = RF_ACTIVE;
	r->pid = pid;
	r->tid = tid;
	r->uid = (__u32)bpf_get_current_uid_gid();
	r->ts_enter = bpf_ktime_get_ns();
	r->ts_exit = 0;
	r->ret = 0;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
#pragma unroll
	for (int i = 0; i < MAX_ARGS; i++)
		r->args[i] = args[i];

	r->nreads = 0;
	enter_slot(r, sc, args, 0);
	enter_slot(r, sc, args, 1);
	enter_slot(r, sc, args, 2);
	enter_slot(r, sc, args, 3);

	if (sc->flags & SC_NORETURN) {
		r->flags |= RF_NORETURN;
		emit(ctx, r, data_end(r));
	}
	return 0;
}

/* Does the exit read at xoff equal the entry read at eoff (len bytes)? Word by word; the last word
 * is masked to len, since bytes past a string's NUL are left over from earlier records. */
static __always_inline int same_bytes(struct sys_record *r, __u32 eoff, __u32 xoff, __u32 len)
{
	__u64 e = eoff, x = xoff;
	if (e > DATA_CAP - READ_CAP - 1 || x > DATA_CAP - READ_CAP - 1 || len > READ_CAP)
		return 0;
	CLAMP(e, DATA_CAP - READ_CAP - 1);
	CLAMP(x, DATA_CAP - READ_CAP - 1);
	for (__u32 k = 0; k < len && k < READ_CAP; k += 8) {
		__u64 diff = *(__u64 *)&r->data[e + k] ^ *(__u64 *)&r->data[x + k];
		if (len - k < 8)
			diff &= (1ULL << ((len - k) * 8)) - 1;
		if (diff)
			return 0;
	}
	return 1;
}

static __always_inline void exit_slot(struct sys_record *r, struct sc_conf *sc, int recover, int k)
{
	if (k >= r->nreads)
		return;
	struct read_slot *s = &r->reads[k];
	__u8 a = s->arg;
	if (a >= MAX_ARGS)
		return;
	if (s->kind == RK_SOCKADDR_OUT) {
		if (r->ret < 0)
			return;
	} else if (!recover || s->enter_status == RS_NULL || s->enter_status == RS_NONE) {
		return;
	} else if ((sc->flags & SC_EXEC) && r->ret == 0) {
		s->exit_status = RS_SKIPPED;
		return;
	}
	__u32 pos = data_end(r);
	__u32 want = s->kind == RK_STR ? 0 : want_size(sc, k, r->args);
	__u32 cap = sc->rd_size[k];
	if (s->kind == RK_SOCKADDR_OUT) {
		if (s->want < cap)
			cap = s->want; /* what the kernel could write: shorter than `want` means truncated */
		s->want = want;
	}
	s->exit_off = pos;
	s->exit_status = read_arg(r, pos, s->kind, r->args[a], want, cap, &s->exit_err, &s->exit_len);
	if ((s->enter_status == RS_OK || s->enter_status == RS_TRUNC) &&
	    (s->exit_status == RS_OK || s->exit_status == RS_TRUNC) && s->exit_len == s->enter_len &&
	    same_bytes(r, s->enter_off, s->exit_off, s->exit_len))
		s->exit_same = 1;
}

static __always_inline void exit_reads(struct sys_record *r, struct sc_conf *sc, int recover)
{
	exit_slot(r, sc, recover, 0);
	exit_slot(r, sc, recover, 1);
	exit_slot(r, sc, recover, 2);
	exit_slot(r, sc, recover, 3);
}

int sys_exit(struct sc_exit_ctx *ctx)
{
	__u32 zero = 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sys_record *r = inflight.lookup(&tid);
	if (!r || !(r->flags & RF_ACTIVE))
		return 0;
	int nr = ctx->nr;
	if (nr != r->nr) {
		/* A sys_exit of another syscall: our state is stale (e.g. we attached mid-call). */
		r->flags &= ~RF_ACTIVE;
		count(ST_NO_STATE);
		return 0;
	}
	struct tracer_conf *c = conf.lookup(&zero);
	struct sc_conf *sc = sc_conf.lookup((__u32 *)&nr);
	if (!c || !sc)
		return 0;
	r->ret = ctx->ret;
	r->ts_exit = bpf_ktime_get_ns();
	if (c->flags & CF_RECOVER)
		r->flags |= RF_EXIT_READS;
	exit_reads(r, sc, c->flags & CF_RECOVER);
	emit(ctx, r, data_end(r));
	return 0;
}

/* Follow mode: children of traced processes are traced too. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
	__u32 zero = 0;
	struct tracer_conf *c = conf.lookup(&zero);
	if (!c || !(c->flags & CF_FOLLOW))
		return 0;
	__u32 parent = bpf_get_current_pid_tgid() >> 32;
	if (!pids.lookup(&parent))
		return 0;
	__u32 child = args->child_pid;
	__u8 one = 1;
	pids.update(&child, &one);
	return 0;
}

/* One entry program per argument count: a program may only read the context of the tracepoints
 * it is attached to, and sys_enter records are as long as the syscall's argument list. */
#define ENTER_PROG(N)                                                        \
	int sys_enter_##N(struct sc_enter_ctx *ctx)                          \
	{                                                                    \
		__u64 args[MAX_ARGS] = {};                                   \
		_Pragma("unroll") for (int i = 0; i < N; i++) args[i] = ctx->args[i]; \
		return handle_enter(ctx, ctx->nr, args);                     \
	}

ENTER_PROG(0)
ENTER_PROG(1)
ENTER_PROG(2)
ENTER_PROG(3)
ENTER_PROG(4)
ENTER_PROG(5)
ENTER_PROG(6)
