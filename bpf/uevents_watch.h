/* Records of bpf/uevents_watch.bpf.c (the writer side of user_events), shared with
 * tracer/user_events/watch.py through tracer/layout.py; tests/test_layout.py checks the offsets
 * against gcc. Same subset of C as record.h: #define NAME <int>, fixed-width fields, explicit padding.
 */
#ifndef TRACER_UEVENTS_WATCH_H
#define TRACER_UEVENTS_WATCH_H

#define UE_TASK_COMM_LEN 16
#define UE_NAME_CAP 256   /* bytes of name_args kept from a registration */
#define UE_PATH_CAP 128   /* user_events_data path compared at openat */

/* struct ue_record.type */
#define UE_REC_REG 1      /* DIAG_IOCSREG succeeded: write_index -> name_args on this fd */
#define UE_REC_FAULT 2    /* write/writev returned -EFAULT */

/* struct ue_record.sc */
#define UE_SC_WRITE 1
#define UE_SC_WRITEV 2
#define UE_SC_IOCTL 3

/* struct ue_record.flags */
#define UE_F_MARKED 1     /* the fd was known in the kernel as a user_events_data descriptor */
#define UE_F_INDEX 2      /* write_index was read */
#define UE_F_SPLIT 4      /* writev's first iovec is shorter than the 4-byte write_index */
#define UE_F_NAME_TRUNC 8 /* name_args longer than UE_NAME_CAP */

/* per-CPU counters */
#define UE_ST_REG 0
#define UE_ST_FAULT 1
#define UE_ST_SUBMIT_FAIL 2
#define UE_ST_MARKED_OPEN 3
#define UE_NSTATS 4

struct ue_record {
	__u16 type;
	__u8 sc;
	__u8 flags;
	__u32 pid;        /* tgid */
	__u32 tid;
	__s32 fd;
	__u64 ts;         /* bpf_ktime_get_ns() */
	__s64 ret;
	__u64 addr;       /* write: buf; writev: the iovec array; ioctl: struct user_reg */
	__u64 count;      /* write: count; writev: iovcnt */
	__u64 data_addr;  /* where the write_index was (to be) read */
	__u32 write_index;
	__s32 index_err;  /* helper error reading the write_index (0 when read) */
	__u16 name_len;
	__u16 pad0;
	__u32 event_id;   /* fault: tracefs id of the event the kernel's table maps write_index to (0: unknown) */
	char comm[UE_TASK_COMM_LEN];
	char name[UE_NAME_CAP];
};

struct ue_conf {
	__u32 path_len;   /* bytes of path (without NUL); 0: no openat matching */
	__u32 pad0;
	char path[UE_PATH_CAP];
};

#endif
