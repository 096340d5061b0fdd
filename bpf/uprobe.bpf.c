/* User-space function probes: arguments read at the call, the record sent at the return.
 *
 * For probe spec N (0..UP_MAX_PROBES-1) there are three programs: up_enter_s_N is loaded sleepable
 * (BPF_F_SLEEPABLE, by tracer/sleepable.py) and may fault pages in with bpf_copy_from_user;
 * up_enter_N is its nofault twin (bpf_probe_read_user only). Either fills a per-(thread, probe) record
 * in up_inflight. A sleepable program cannot write to a perf event array, so up_ret_N, a plain
 * uretprobe, adds the return value and sends the record on up_events: one perf stream.
 *
 * Layout and constants: uprobe.h (shared with tracer/layout.py). Compiled by bcc at run time.
 */
#include <uapi/linux/ptrace.h>
#include "uprobe.h"
#include "reads.h"

_Static_assert(URF_FAULTED_IN == RSRC_FAULTED_IN, "read_user() sets RSRC_FAULTED_IN in rflags[k]");

#ifndef UP_INFLIGHT_ENTRIES
#define UP_INFLIGHT_ENTRIES 8192
#endif

BPF_PERF_OUTPUT(up_events);
BPF_ARRAY(up_filter, struct tracer_conf, 1);
BPF_ARRAY(up_conf, struct sc_conf, UP_MAX_PROBES);
BPF_HASH(up_pids, __u32, __u8, 65536);
BPF_HASH(up_tids, __u32, __u8, 1024);
BPF_PERCPU_ARRAY(up_stats, __u64, NSTATS);
BPF_ARRAY(up_zero, struct uprobe_record, 1);
/* Keyed by tid << 8 | probe: nested calls of different probed functions keep their own records.
 * A plain hash, emptied at each return: an LRU would evict the record of a call that blocks long,
 * silently; here a full table is counted (ST_STATE_FULL), and what stays is in flight (tracer/uprobes.py
 * counts it at the end). */
BPF_HASH(up_inflight, __u64, struct uprobe_record, UP_INFLIGHT_ENTRIES);

static __always_inline void up_count(int idx)
{
	__u64 *c = up_stats.lookup(&idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline int up_wanted(struct tracer_conf *c, __u32 pid, __u32 tid)
{
	if (c->flags & CF_OFF)
		return 0; /* not tracing yet (probes attaching) or any more: see CF_OFF in record.h */
	if (pid == c->self_pid)
		return 0;
	if ((c->flags & CF_PID) && !up_pids.lookup(&pid))
		return 0;
	if ((c->flags & CF_TID) && !up_tids.lookup(&tid))
		return 0;
	return conf_match(c);
}

static __always_inline __u32 up_want(struct sc_conf *sc, int k, __u64 *args)
{
	if (sc->rd_kind[k] == RK_BUF)
		return sc->rd_size[k];
	__u8 la = sc->rd_lenarg[k];
	if (la >= MAX_ARGS)
		return 0;
	__s64 v = args[la];
	return v < 0 ? 0 : v > 0xffffffffLL ? 0xffffffff : (__u32)v;
}

/* Slot k, with constant k at every call (constant offsets for the verifier); data follows the
 * previous slot's bytes. */
static __always_inline void up_slot(struct uprobe_record *r, struct sc_conf *sc, int k, const int sleepable)
{
	if (k >= sc->nreads)
		return;
	__u32 pos = 0;
	if (k > 0)
		pos = r->reads[k - 1].enter_off + r->reads[k - 1].enter_len + 1;
	struct read_slot *s = &r->reads[k];
	__u8 a = sc->rd_arg[k];
	__u8 kind = sc->rd_kind[k];
	r->nreads = k + 1;
	r->rflags[k] = 0;
	s->arg = a;
	s->kind = kind;
	s->enter_off = pos;
	s->enter_len = 0;
	s->enter_err = 0;
	s->exit_status = RS_NONE;
	s->exit_err = 0;
	s->exit_off = 0;
	s->exit_len = 0;
	s->exit_same = 0;
	s->src = 0;
	s->want = 0;
	s->enter_status = RS_NONE;
	if (a >= MAX_ARGS)
		return;
	s->want = kind == RK_STR ? 0 : up_want(sc, k, r->args);
	s->enter_status = read_user(r->data, pos, kind, r->args[a], s->want, sc->rd_size[k], &s->enter_err,
				    &s->enter_len, &r->rflags[k], sleepable);
}

static __always_inline int up_enter(struct pt_regs *ctx, __u32 probe, const int sleepable)
{
	__u32 zero = 0;
	struct tracer_conf *c = up_filter.lookup(&zero);
	struct sc_conf *sc = up_conf.lookup(&probe);
	if (!c || !sc)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32, tid = (__u32)id;
	if (!up_wanted(c, pid, tid))
		return 0;
	__u64 key = (__u64)tid << 8 | probe;
	struct uprobe_record *r = up_inflight.lookup(&key);
	if (r && (r->flags & UPF_ACTIVE))
		up_count(ST_NO_EXIT); /* this thread is in the function already (recursion, longjmp out): that
				       * call's record is replaced, its return will find none */
	if (!r) {
		struct uprobe_record *z = up_zero.lookup(&zero);
		if (!z)
			return 0;
		up_inflight.update(&key, z);
		r = up_inflight.lookup(&key);
		if (!r) {
			up_count(ST_STATE_FULL);
			return 0;
		}
	}
	r->type = REC_UPROBE;
	r->probe = probe;
	r->flags = UPF_ACTIVE | (sleepable ? UPF_SLEEPABLE : 0);
	r->pid = pid;
	r->tid = tid;
	r->uid = (__u32)bpf_get_current_uid_gid();
	r->ts_enter = bpf_ktime_get_ns();
	r->ts_exit = 0;
	r->ret = 0;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	r->args[0] = PT_REGS_PARM1(ctx);
	r->args[1] = PT_REGS_PARM2(ctx);
	r->args[2] = PT_REGS_PARM3(ctx);
	r->args[3] = PT_REGS_PARM4(ctx);
	r->args[4] = PT_REGS_PARM5(ctx);
	r->args[5] = PT_REGS_PARM6(ctx);
	r->nreads = 0;
	up_slot(r, sc, 0, sleepable);
	up_slot(r, sc, 1, sleepable);
	up_slot(r, sc, 2, sleepable);
	up_slot(r, sc, 3, sleepable);
	return 0;
}

static __always_inline int up_ret(struct pt_regs *ctx, __u32 probe)
{
	__u32 zero = 0;
	struct tracer_conf *c = up_filter.lookup(&zero);
	if (!c || (c->flags & CF_OFF))
		return 0; /* stopped: a call still in flight stays so, and is counted as such */
	__u64 key = (bpf_get_current_pid_tgid() & 0xffffffff) << 8 | probe;
	struct uprobe_record *r = up_inflight.lookup(&key);
	if (!r || !(r->flags & UPF_ACTIVE))
		return 0;
	r->flags &= ~UPF_ACTIVE;
	r->ret = PT_REGS_RC(ctx);
	r->ts_exit = bpf_ktime_get_ns();
	__u32 end = 0; /* past the last slot's bytes; constant slot indexes for the verifier */
	if (r->nreads >= 1 && r->nreads <= MAX_READS)
		end = r->reads[0].enter_off + r->reads[0].enter_len + 1;
	if (r->nreads >= 2 && r->nreads <= MAX_READS)
		end = r->reads[1].enter_off + r->reads[1].enter_len + 1;
	if (r->nreads >= 3 && r->nreads <= MAX_READS)
		end = r->reads[2].enter_off + r->reads[2].enter_len + 1;
	if (r->nreads == MAX_READS)
		end = r->reads[3].enter_off + r->reads[3].enter_len + 1;
	__u64 size = offsetof(struct uprobe_record, data) + end;
	CLAMP(size, sizeof(struct uprobe_record));
	r->size = size;
	if (up_events.perf_submit(ctx, r, size) == 0)
		up_count(ST_EMITTED);
	else
		up_count(ST_SUBMIT_FAIL);
	up_inflight.delete(&key);
	return 0;
}

/* Follow mode: children of traced processes are traced too. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
	__u32 zero = 0;
	struct tracer_conf *c = up_filter.lookup(&zero);
	if (!c || !(c->flags & CF_FOLLOW))
		return 0;
	__u32 parent = bpf_get_current_pid_tgid() >> 32;
	if (!up_pids.lookup(&parent))
		return 0;
	__u32 child = args->child_pid;
	__u8 one = 1;
	up_pids.update(&child, &one);
	return 0;
}

#define UP_PROGS(N)                                                                  \
	int up_enter_s_##N(struct pt_regs *ctx) { return up_enter(ctx, N, 1); }      \
	int up_enter_##N(struct pt_regs *ctx) { return up_enter(ctx, N, 0); }        \
	int up_ret_##N(struct pt_regs *ctx) { return up_ret(ctx, N); }

UP_PROGS(0)
UP_PROGS(1)
UP_PROGS(2)
UP_PROGS(3)
UP_PROGS(4)
UP_PROGS(5)
UP_PROGS(6)
UP_PROGS(7)
