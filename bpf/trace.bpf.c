/* Syscall tracing: one record per syscall, built in place between sys_enter and sys_exit.
 *
 * sys_enter_* (any syscall; one program per argument count so that context reads stay inside each
 * tracepoint's record): filter, copy arguments, read pointer arguments as sc_conf says, keep the
 * state per thread. sys_exit_*: add the return value, re-read the pointers (recovery of failed entry
 * reads; detection of memory changed during the call), send the record on the BPF ring buffer (one,
 * shared by the CPUs: bpf_ringbuf_output costs ~60 ns for a typical record where bpf_perf_event_output
 * into a per-CPU perf ring cost ~320 ns).
 *
 * With -DTRACER_SLEEPABLE (--read-mode sleepable, tracer/sleepable.py loads and attaches them), two
 * kinds of sleepable readers are compiled in as well; they leave the sending to sys_exit, so the stream
 * stays one ring:
 *  - sys_enter_s_N, the entry programs made sleepable (tp.s: syscall tracepoints, same context): each
 *    read falls back to bpf_copy_from_user when the nofault read fails;
 *  - sys_fentry_s (fentry.s on __x64_sys_<name>, which runs right after the sys_enter tracepoint):
 *    copies the reads the nofault sys_enter program could not make, into the same in-flight record.
 * Reads they make carry RSRC_SLEEPABLE in read_slot.src and the record RF_SLEEPABLE.
 *
 * Layout and constants: record.h (shared with tracer/layout.py). Compiled by bcc at run time.
 */
#include "reads.h"
#ifdef TRACER_KFILE
#include "kfile.h"
#include "strv.h"
#endif

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

/* The ring: RING_PAGES pages (a power of two; tracer/probes.py sets it from the memory budget or
 * --buffer-pages). A record goes out without waking the reader, except when this CPU's records cross a
 * multiple of WAKE_BYTES (a quarter of the ring, at most 1 MiB: what the perf rings' watermark did); the
 * reader also polls every 100 ms. */
#ifndef RING_PAGES
#define RING_PAGES 256
#endif
#define RING_BYTES ((__u64)RING_PAGES * 4096)
#define WAKE_BYTES (RING_BYTES / 4 < (1 << 20) ? RING_BYTES / 4 : (1 << 20))
BPF_RINGBUF_OUTPUT(events, RING_PAGES);
BPF_PERCPU_ARRAY(ring_sent, __u64, 1); /* bytes this CPU sent: when to wake the reader */
BPF_ARRAY(conf, struct tracer_conf, 1);
BPF_ARRAY(sc_conf, struct sc_conf, 1024);
BPF_HASH(pids, __u32, __u8, 65536);
BPF_HASH(tids, __u32, __u8, 1024);
BPF_PERCPU_ARRAY(stats, __u64, NSTATS);
/* The in-flight record behind the ring header it is sent with (struct ring_head, record.h). */
struct inflight_rec {
	struct ring_head h;
	struct sys_record r;
};
BPF_PERCPU_ARRAY(zero_rec, struct inflight_rec, 1);
/* Per-thread in-flight records, reused in place: only a thread's first traced syscall pays for the
 * insert. A plain hash, not an LRU: an LRU would silently evict the state of a thread blocked in a
 * long call; exited threads give their entry back (sched_process_exit) and a full table is counted. */
BPF_HASH(inflight, __u32, struct inflight_rec, INFLIGHT_ENTRIES);
#ifdef TRACER_KFILE
/* Work done for a few syscalls only, in programs of their own (tail calls): verified once each, and
 * absent from the path of every other syscall. */
BPF_PROG_ARRAY(enter_tails, 1); /* [0] sys_enter_exec */
BPF_PROG_ARRAY(exit_tails, 2);  /* [0] sys_exit_kfile, [1] sys_exit_exec */
#endif

static __always_inline void count(int idx)
{
	__u64 *c = stats.lookup(&idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline int wanted_comm(struct tracer_conf *c, __u32 pid, __u32 tid, char *comm)
{
	if (pid == c->self_pid || (c->flags & CF_OFF))
		return 0;
	if ((c->flags & CF_PID) && !pids.lookup(&pid))
		return 0;
	if ((c->flags & CF_TID) && !tids.lookup(&tid))
		return 0;
	return conf_match_comm(c, comm);
}

static __always_inline int wanted(struct tracer_conf *c, __u32 pid, __u32 tid)
{
	char comm[TASK_COMM_LEN] = {};
	return wanted_comm(c, pid, tid, comm);
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
	/* Reloaded through the record: the verifier forgets the ranges of `pos` from the paths before and
	 * checks the sending below once, not once per range (it doubled sys_exit's verification time). */
	size = *(volatile __u16 *)&r->size;
	CLAMP(size, sizeof(struct sys_record));
	r->flags &= ~RF_ACTIVE;
	struct inflight_rec *w = (struct inflight_rec *)((char *)r - offsetof(struct inflight_rec, r));
	w->h.cpu = bpf_get_smp_processor_id();
	size += sizeof(struct ring_head);
	__u64 wake = BPF_RB_NO_WAKEUP;
	__u32 zero = 0;
	__u64 *sent = ring_sent.lookup(&zero);
	if (sent) {
		__u64 before = *sent;
		*sent = before + size;
		if ((before ^ (before + size)) >= WAKE_BYTES) /* crossed a multiple of WAKE_BYTES (a power of 2) */
			wake = BPF_RB_FORCE_WAKEUP;
	}
	long e = events.ringbuf_output(w, size, wake);
	if (e == 0) {
		count(ST_EMITTED);
	} else {
		count(ST_SUBMIT_FAIL);
		if (e == -11) /* -EAGAIN: no room (bpf_ringbuf_output's only other error, -EINVAL, is bad flags) */
			count(ST_RING_FULL);
	}
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

static __always_inline void enter_slot(struct sys_record *r, struct sc_conf *sc, __u64 *args, int k,
				       const int sleepable)
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
	s->src = 0;
	if (a >= MAX_ARGS || kind == RK_STRV) /* RK_STRV: read by sys_enter_exec */
		return;
	if (kind == RK_SOCKADDR_OUT) {
		/* The caller's buffer size: the kernel copies at most this much but reports the full
		 * address length, so the exit read must not go past it. When *addrlen itself cannot be read
		 * here (an untouched page), enter_status RS_FAULT says the size is unknown: the exit read
		 * then takes the length the kernel wrote back. */
		s->want = want_size(sc, k, args);
		__u8 la = sc->rd_lenarg[k];
		if (!s->want && args[a] && la < MAX_ARGS && args[la]) {
			int ulen = 0;
			int e = bpf_probe_read_user(&ulen, sizeof(ulen), (void *)args[la]);
			if (e < 0) {
				s->enter_status = RS_FAULT;
				s->enter_err = e;
			}
		}
		return;
	}
	s->want = kind == RK_STR ? 0 : want_size(sc, k, args);
	s->src = sleepable ? RSRC_SLEEPABLE : 0;
	s->enter_status = read_user(r->data, pos, kind, args[a], s->want, sc->rd_size[k], &s->enter_err,
				    &s->enter_len, &s->src, sleepable);
}

static __always_inline int handle_enter(void *ctx, int nr, __u64 *args, const int sleepable)
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
	__u64 comm[TASK_COMM_LEN / 8] = {};
	if (!wanted_comm(c, pid, tid, (char *)comm))
		return 0;

	struct inflight_rec *w = inflight.lookup(&tid);
	struct sys_record *r = w ? &w->r : 0;
	if (!r) {
		struct inflight_rec *z = zero_rec.lookup(&zero);
		if (!z)
			return 0;
		inflight.update(&tid, z);
		w = inflight.lookup(&tid);
		r = w ? &w->r : 0;
		if (!r) {
			count(ST_STATE_FULL); /* a lost call: its record cannot be built */
			return 0;
		}
	} else if (r->flags & RF_ACTIVE) {
		count(ST_NO_EXIT); /* the previous call's sys_exit was never seen */
	}
	r->type = REC_SYSCALL;
	r->nr = nr;
	r->flags = RF_ACTIVE | (sleepable ? RF_SLEEPABLE : 0);
	r->pid = pid;
	r->tid = tid;
	r->uid = (__u32)bpf_get_current_uid_gid();
	r->ts_enter = bpf_ktime_get_ns();
	r->ts_exit = 0;
	r->ret = 0;
	if (c->flags & CF_COMM) { /* read by the comm filter already */
		__u64 *rc = (__u64 *)r->comm;
		rc[0] = comm[0];
		rc[1] = comm[1];
	} else {
		bpf_get_current_comm(r->comm, sizeof(r->comm));
	}
#pragma unroll
	for (int i = 0; i < MAX_ARGS; i++)
		r->args[i] = args[i];

	r->nreads = 0;
	enter_slot(r, sc, args, 0, sleepable);
	enter_slot(r, sc, args, 1, sleepable);
	enter_slot(r, sc, args, 2, sleepable);
	enter_slot(r, sc, args, 3, sleepable);

#ifdef TRACER_KFILE
	if (!sleepable && (sc->flags & SC_EXEC))
		enter_tails.call(ctx, 0); /* argv/envp; returns here only if the tail call fails */
#endif
	/* Sleepable entry programs cannot emit: they are attached to syscalls that return only. */
	if (!sleepable && (sc->flags & SC_NORETURN)) {
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
	if (a >= MAX_ARGS || s->kind == RK_STRV) /* RK_STRV: read by sys_exit_exec */
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
		if (s->enter_status != RS_FAULT && s->want < cap)
			cap = s->want; /* what the kernel could write: shorter than `want` means truncated */
		s->want = want;
	}
	__u8 rf = 0;
	s->exit_off = pos;
	s->exit_status = read_user(r->data, pos, s->kind, r->args[a], want, cap, &s->exit_err, &s->exit_len,
				   &rf, 0);
}

/* Slot k's exit read equals its entry read: exit_same, and its bytes are not sent twice. A pass of its own
 * after every exit read, from the record alone (volatile loads): the paths through the reads converge
 * before it and the verifier walks the comparison's loop once per slot, not once per path (it was
 * ~100k of sys_exit's ~137k verified instructions). */
static __always_inline void same_slot(struct sys_record *r, int k)
{
	if (k >= *(volatile __u8 *)&r->nreads)
		return;
	struct read_slot *s = &r->reads[k];
	__u8 es = *(volatile __u8 *)&s->enter_status, xs = *(volatile __u8 *)&s->exit_status;
	__u32 elen = *(volatile __u16 *)&s->enter_len, xlen = *(volatile __u16 *)&s->exit_len;
	if ((es == RS_OK || es == RS_TRUNC) && (xs == RS_OK || xs == RS_TRUNC) && s->kind != RK_STRV &&
	    xlen == elen && same_bytes(r, *(volatile __u16 *)&s->enter_off, *(volatile __u16 *)&s->exit_off, xlen))
		s->exit_same = 1;
}

static __always_inline void exit_reads(struct sys_record *r, struct sc_conf *sc, int recover)
{
	exit_slot(r, sc, recover, 0);
	exit_slot(r, sc, recover, 1);
	exit_slot(r, sc, recover, 2);
	exit_slot(r, sc, recover, 3);
	same_slot(r, 0);
	same_slot(r, 1);
	same_slot(r, 2);
	same_slot(r, 3);
}

/* A sys_exit with no entry state of this call: counted, not lost. The call began before tracing did
 * (a new task's return from fork/clone, the -- CMD child's wait to start, a call in progress when
 * tracing started) or its entry was counted as state_full. */
static __always_inline void exit_without_entry(struct tracer_conf *c)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (wanted(c, id >> 32, (__u32)id))
		count(ST_NO_STATE);
}

int sys_exit(struct sc_exit_ctx *ctx)
{
	__u32 zero = 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	int nr = ctx->nr;
	struct tracer_conf *c = conf.lookup(&zero);
	struct sc_conf *sc = sc_conf.lookup((__u32 *)&nr);
	if (!c || !sc || (c->flags & CF_OFF))
		return 0; /* stopped: a call still in flight is counted as such, from user space */
	if (!(sc->flags & SC_TRACED))
		return 0; /* raw_syscalls:sys_exit runs for every syscall */
	struct inflight_rec *w = inflight.lookup(&tid);
	struct sys_record *r = w ? &w->r : 0;
	if (!r || !(r->flags & RF_ACTIVE)) {
		exit_without_entry(c);
		return 0;
	}
	if (nr != r->nr) {
		/* A sys_exit of another syscall: the stored call never exited, this one never entered. */
		r->flags &= ~RF_ACTIVE;
		count(ST_NO_EXIT);
		exit_without_entry(c);
		return 0;
	}
	r->ret = ctx->ret;
	r->ts_exit = bpf_ktime_get_ns();
	if (c->flags & CF_RECOVER)
		r->flags |= RF_EXIT_READS;
	exit_reads(r, sc, c->flags & CF_RECOVER);
#ifdef TRACER_KFILE
	/* The file the kernel opened: the heavy part of an exit, made only for successful open calls, in a
	 * program of its own (a tail call) so that the verifier checks its walk once, not once per outcome
	 * of the reads above. If the tail call fails, the record goes out without it (no RF_OPENED). */
	if ((sc->flags & SC_OPEN) && r->ret >= 0)
		exit_tails.call(ctx, 0);
	if (sc->flags & SC_EXEC)
		exit_tails.call(ctx, 1);
#endif
	emit(ctx, r, data_end(r));
	return 0;
}

#ifdef TRACER_KFILE
/* Tail of sys_exit for a successful open-family call: struct kfile after the reads, then the record. */
int sys_exit_kfile(struct sc_exit_ctx *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct inflight_rec *w = inflight.lookup(&tid);
	struct sys_record *r = w ? &w->r : 0;
	if (!r || !(r->flags & RF_ACTIVE))
		return 0;
	/* Through the record, not a register: the offset's value ranges from data_end()'s paths are then
	 * forgotten, and the walk is verified once rather than once per range. */
	r->xoff = (data_end(r) + 7) & ~7;
	__u32 at = *(volatile __u32 *)&r->xoff;
	__u32 n = kfile_read(r->data, at, r->ret);
	if (n) {
		r->flags |= RF_OPENED;
		emit(ctx, r, at + n);
	} else {
		emit(ctx, r, data_end(r));
	}
	return 0;
}
#endif

#ifdef TRACER_KFILE
/* Slot k (constant) of an exec, if it is an RK_STRV: the caller's array at data_end, at entry or (exit,
 * failed exec) again at exit. The offset goes through the record so the verifier forgets its ranges. */
static __always_inline void strv_slot(struct sys_record *r, int k, int at_exit)
{
	if (k >= r->nreads)
		return;
	struct read_slot *s = &r->reads[k];
	__u8 a = s->arg;
	if (s->kind != RK_STRV || a >= MAX_ARGS)
		return;
	__u32 at = data_end(r);
	if (at_exit) {
		s->exit_off = at;
		at = *(volatile __u16 *)&s->exit_off;
	} else {
		s->enter_off = at;
		at = *(volatile __u16 *)&s->enter_off;
	}
	__u64 vec = r->args[a];
	__u32 n = 0;
	if (!vec) {
		if (!at_exit)
			s->enter_status = RS_NULL;
		return;
	}
	n = strv_read(r->data, at, vec);
	if (at_exit) {
		s->exit_len = n;
		s->exit_status = n ? RS_OK : RS_NOROOM;
	} else {
		s->enter_len = n;
		s->enter_status = n ? RS_OK : RS_NOROOM;
	}
}

/* Slot k at exit of a successful exec: the kernel's copy in the new process's memory. */
static __always_inline void mm_slot(struct sys_record *r, struct sc_conf *sc, int k)
{
	if (k >= r->nreads)
		return;
	struct read_slot *s = &r->reads[k];
	if (s->kind != RK_STRV)
		return;
	s->exit_off = data_end(r);
	mm_block(r->data, s, sc->rd_lenarg[k] == 1);
}

/* Tail of sys_enter_N for execve/execveat: argv and envp. */
int sys_enter_exec(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct inflight_rec *w = inflight.lookup(&tid);
	struct sys_record *r = w ? &w->r : 0;
	if (!r || !(r->flags & RF_ACTIVE))
		return 0;
	strv_slot(r, 0, 0);
	strv_slot(r, 1, 0);
	strv_slot(r, 2, 0);
	strv_slot(r, 3, 0);
	return 0;
}

/* Tail of sys_exit for execve/execveat: the kernel's copies after a success, the old memory after a
 * failure (recovery on), then the record. */
int sys_exit_exec(struct sc_exit_ctx *ctx)
{
	__u32 zero = 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct inflight_rec *w = inflight.lookup(&tid);
	struct sys_record *r = w ? &w->r : 0;
	if (!r || !(r->flags & RF_ACTIVE))
		return 0;
	__u32 nr = r->nr;
	struct sc_conf *sc = sc_conf.lookup(&nr);
	struct tracer_conf *c = conf.lookup(&zero);
	if (!sc || !c)
		return 0;
	if (r->ret == 0) {
		mm_slot(r, sc, 0);
		mm_slot(r, sc, 1);
		mm_slot(r, sc, 2);
		mm_slot(r, sc, 3);
	} else if (c->flags & CF_RECOVER) {
		strv_slot(r, 0, 1);
		strv_slot(r, 1, 1);
		strv_slot(r, 2, 1);
		strv_slot(r, 3, 1);
	}
	emit(ctx, r, data_end(r));
	return 0;
}
#endif

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

/* An exiting thread gives its in-flight entry back; a call still in flight then never returns. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
	__u32 zero = 0;
	struct tracer_conf *c = conf.lookup(&zero);
	if (!c || (c->flags & CF_OFF))
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct inflight_rec *w = inflight.lookup(&tid);
	struct sys_record *r = w ? &w->r : 0;
	if (!r)
		return 0;
	if (r->flags & RF_ACTIVE)
		count(ST_NO_EXIT);
	inflight.delete(&tid);
	return 0;
}

/* One entry program per argument count: a program may only read the context of the tracepoints
 * it is attached to, and sys_enter records are as long as the syscall's argument list. */
#define ENTER_PROG_AS(N, name, sleepable)                                     \
	int name(struct sc_enter_ctx *ctx)                                   \
	{                                                                    \
		__u64 args[MAX_ARGS] = {};                                   \
		_Pragma("unroll") for (int i = 0; i < N; i++) args[i] = ctx->args[i]; \
		return handle_enter(ctx, ctx->nr, args, sleepable);          \
	}
#define ENTER_PROG(N) ENTER_PROG_AS(N, sys_enter_##N, 0)

ENTER_PROG(0)
ENTER_PROG(1)
ENTER_PROG(2)
ENTER_PROG(3)
ENTER_PROG(4)
ENTER_PROG(5)
ENTER_PROG(6)

#ifdef TASK_STATUS_OFF
/* Large syscall sets attach to raw_syscalls:sys_enter/sys_exit (two tracepoints, not two per syscall:
 * each perf event detach costs the kernel an RCU-tasks grace period, serialised). Their records start
 * as sc_enter_ctx/sc_exit_ctx do (id at 8, args or ret at 16) and sc_conf filters the numbers; sys_exit
 * serves both. They also fire for ia32 syscalls (int 0x80, TS_COMPAT), whose numbers are not x86_64's:
 * skipped, as the syscalls:* events skip them. TASK_STATUS_OFF: offsetof(task_struct,
 * thread_info.status), from the running kernel's BTF (tracer/probes.py). */
#define TS_COMPAT 0x0002
int raw_sys_enter(struct sc_enter_ctx *ctx)
{
	__u32 status = 0;
	bpf_probe_read_kernel(&status, sizeof(status), (char *)bpf_get_current_task() + TASK_STATUS_OFF);
	if (status & TS_COMPAT)
		return 0;
	__u64 args[MAX_ARGS] = {};
	_Pragma("unroll") for (int i = 0; i < MAX_ARGS; i++) args[i] = ctx->args[i];
	return handle_enter(ctx, ctx->nr, args, 0);
}
#endif

#ifdef TRACER_SLEEPABLE
/* tp.s: the same entry programs, loaded with BPF_F_SLEEPABLE. */
#define ENTER_PROG_S(N) ENTER_PROG_AS(N, sys_enter_s_##N, 1)

ENTER_PROG_S(0)
ENTER_PROG_S(1)
ENTER_PROG_S(2)
ENTER_PROG_S(3)
ENTER_PROG_S(4)
ENTER_PROG_S(5)
ENTER_PROG_S(6)

/* offsetof(struct pt_regs, orig_ax) on x86_64 (15 general registers before it; unchanged by FRED's
 * unions). The syscall number, as sys_enter saw it. */
#define PT_REGS_ORIG_AX 120

/* fentry.s: slot k (constant) again, with bpf_copy_from_user, if the nofault entry read failed. The
 * bytes go after the record's used data (the failed slot kept no room). */
static __always_inline void copy_slot(struct sys_record *r, struct sc_conf *sc, int k)
{
	if (k >= r->nreads)
		return;
	struct read_slot *s = &r->reads[k];
	__u8 a = s->arg;
	if (s->enter_status != RS_FAULT || a >= MAX_ARGS || s->kind == RK_SOCKADDR_OUT)
		return;
	__u32 pos = data_end(r);
	__s16 err = 0;
	__u16 len = 0;
	__u8 src = RSRC_SLEEPABLE;
	int st = read_user(r->data, pos, s->kind, r->args[a], s->want, sc->rd_size[k], &err, &len, &src, 1);
	if (st == RS_NOROOM)
		return; /* the nofault outcome stands */
	r->flags |= RF_SLEEPABLE;
	s->src = src;
	s->enter_status = st;
	s->enter_err = err;
	if (st == RS_OK || st == RS_TRUNC) {
		s->enter_off = pos;
		s->enter_len = len;
	}
}

/* fentry.s on __x64_sys_<name>(const struct pt_regs *regs): ctx[0] is regs. The arguments were stored
 * by sys_enter_N a moment before, in this thread's in-flight record. */
int sys_fentry_s(__u64 *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct inflight_rec *w = inflight.lookup(&tid);
	struct sys_record *r = w ? &w->r : 0;
	if (!r || !(r->flags & RF_ACTIVE))
		return 0;
	__u64 nr = ~0ULL;
	bpf_probe_read_kernel(&nr, sizeof(nr), (void *)(ctx[0] + PT_REGS_ORIG_AX));
	if (nr >= 1024 || nr != r->nr)
		return 0; /* not this syscall's record (sys_enter filtered it out; stale state) */
	__u32 n = nr;
	struct sc_conf *sc = sc_conf.lookup(&n);
	if (!sc)
		return 0;
	copy_slot(r, sc, 0);
	copy_slot(r, sc, 1);
	copy_slot(r, sc, 2);
	copy_slot(r, sc, 3);
	return 0;
}
#endif
