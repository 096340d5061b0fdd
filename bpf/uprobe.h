/* The uprobe record layout, shared by bpf/uprobe.bpf.c and tracer/uprobes.py (through tracer/layout.py,
 * which parses this file after record.h: same subset of C, checked against gcc by tests/test_layout.py).
 *
 * Per-probe configuration reuses struct sc_conf (record.h): nargs, and for each pointer argument to read
 * rd_arg/rd_kind (RK_STR, RK_BUF, RK_BUF_LEN)/rd_lenarg/rd_size. Filters reuse struct tracer_conf, read
 * outcomes struct read_slot (entry fields only: a uprobe is read once, at the call).
 */
#ifndef TRACER_UPROBE_H
#define TRACER_UPROBE_H

#include "record.h"

#define REC_UPROBE 2
#define UP_MAX_PROBES 8 /* probe specs per session: one entry and one return program each */

/* struct uprobe_record.flags */
#define UPF_SLEEPABLE 1 /* entry reads made by a sleepable program (bpf_copy_from_user allowed) */
#define UPF_ACTIVE 2    /* between the call and its return */

/* struct uprobe_record.rflags[i] */
#define URF_FAULTED_IN 1 /* the nofault read failed; bpf_copy_from_user faulted the page(s) in first */

struct uprobe_record {
	__u16 type;   /* REC_UPROBE */
	__u16 size;   /* bytes sent: header and used data */
	__u16 probe;  /* index of the probe spec */
	__u8 nreads;
	__u8 flags;   /* UPF_* */
	__u32 pid;    /* tgid */
	__u32 tid;
	__u32 uid;
	__u32 pad0;
	__u64 ts_enter; /* bpf_ktime_get_ns() at the call (CLOCK_MONOTONIC) */
	__u64 ts_exit;  /* at the return */
	__s64 ret;      /* the return register */
	__u64 args[MAX_ARGS];
	char comm[TASK_COMM_LEN];
	__u8 rflags[MAX_READS]; /* URF_* per read slot */
	__u32 pad1;
	struct read_slot reads[MAX_READS];
	__u8 data[DATA_CAP];
};

#endif
