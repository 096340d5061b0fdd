/* The writer side of user_events: writes the kernel discarded (-EFAULT) and the registrations that name
 * each write_index. The kernel gives tracers no event for a discarded write, so this is the only place
 * it can be seen.
 *
 * A user_events_data descriptor is recognised (marked per tgid and fd) when
 *  - openat/openat2 of the configured <tracefs>/user_events_data path returns it,
 *  - DIAG_IOCSREG succeeds on it (no other file accepts that ioctl), or
 *  - user space found it in /proc/<pid>/fd when tracing started (watch.py).
 * close() unmarks it. Any write/writev that returns -EFAULT is reported, marked or not (user space then
 * checks /proc/<pid>/fd/<fd>); the flags say which.
 */
#include "uevents_watch.h"

#define DIAG_IOCSREG 0xC0082A00u
#define EFAULT 14

struct ue_call {
	__u64 addr;
	__u64 count;
	__u64 data_addr;
	__s32 fd;
	__u32 write_index;
	__s32 index_err;
	__u8 sc;
	__u8 flags;
	__u16 pad;
};

BPF_PERF_OUTPUT(ue_events);
BPF_ARRAY(ue_conf_map, struct ue_conf, 1);
BPF_HASH(ue_fds, __u64, __u8, 65536);        /* tgid << 32 | fd */
BPF_HASH(ue_calls, __u32, struct ue_call, 8192); /* tid -> call in flight */
BPF_HASH(ue_opens, __u32, __u64, 8192);      /* tid -> filename pointer */
BPF_PERCPU_ARRAY(ue_stats, __u64, UE_NSTATS);
BPF_PERCPU_ARRAY(ue_scratch, struct ue_record, 1);
BPF_PERCPU_ARRAY(ue_pathbuf, struct ue_conf, 1);

static __always_inline void ue_count(int idx)
{
	__u64 *c = ue_stats.lookup(&idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline __u64 fd_key(__u32 tgid, int fd)
{
	return (__u64)tgid << 32 | (__u32)fd;
}

static __always_inline void read_index(struct ue_call *c, __u64 ptr)
{
	c->data_addr = ptr;
	c->index_err = bpf_probe_read_user(&c->write_index, sizeof(c->write_index), (void *)ptr);
	if (c->index_err == 0)
		c->flags |= UE_F_INDEX;
}

static __always_inline int enter_write(int fd, __u64 addr, __u64 count, __u8 sc)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct ue_call c = {};
	c.fd = fd;
	c.addr = addr;
	c.count = count;
	c.sc = sc;
	if (sc == UE_SC_WRITE) {
		read_index(&c, addr);
	} else {
		__u64 iov[2] = {};
		c.index_err = bpf_probe_read_user(iov, sizeof(iov), (void *)addr);
		if (c.index_err == 0) {
			if (iov[1] < 4)
				c.flags |= UE_F_SPLIT;
			else
				read_index(&c, iov[0]);
		}
	}
	ue_calls.update(&tid, &c);
	return 0;
}

#ifdef UE_K_USER_DATA_FOPS
/* The event the kernel itself resolved write_index to on this descriptor: current->files->fdt->fd[fd]
 * (a user_events_data file: f_op is user_data_fops) -> private_data (struct user_event_file_info) ->
 * refs->events[write_index] -> call.event.type, the tracefs id. Offsets come from the running kernel's
 * BTF (tracer/user_events/watch.py). Read at the exit of the failed write: the table only grows while the
 * file is open, so this is the entry the write used. 0 when any step fails. */
static __always_inline __u32 kernel_event_id(int fd, __u32 idx)
{
	char *task = (char *)bpf_get_current_task();
	char *files = 0, *fdt = 0, *fds = 0, *file = 0, *fop = 0, *info = 0, *refs = 0, *user = 0;
	unsigned int max_fds = 0;
	int count = 0, type = 0;

	if (fd < 0 || bpf_probe_read_kernel(&files, sizeof(files), task + UE_K_TASK_FILES) || !files)
		return 0;
	if (bpf_probe_read_kernel(&fdt, sizeof(fdt), files + UE_K_FILES_FDT) || !fdt)
		return 0;
	if (bpf_probe_read_kernel(&max_fds, sizeof(max_fds), fdt + UE_K_FDT_MAX_FDS) || (unsigned int)fd >= max_fds)
		return 0;
	if (bpf_probe_read_kernel(&fds, sizeof(fds), fdt + UE_K_FDT_FD) || !fds)
		return 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), fds + (__u64)(unsigned int)fd * sizeof(void *)) || !file)
		return 0;
	if (bpf_probe_read_kernel(&fop, sizeof(fop), file + UE_K_FILE_F_OP) || (__u64)fop != UE_K_USER_DATA_FOPS)
		return 0;
	if (bpf_probe_read_kernel(&info, sizeof(info), file + UE_K_FILE_PRIVATE) || !info)
		return 0;
	if (bpf_probe_read_kernel(&refs, sizeof(refs), info + UE_K_INFO_REFS) || !refs)
		return 0;
	if (bpf_probe_read_kernel(&count, sizeof(count), refs + UE_K_REFS_COUNT) || count <= 0 || idx >= (__u32)count)
		return 0;
	if (bpf_probe_read_kernel(&user, sizeof(user), refs + UE_K_REFS_EVENTS + (__u64)idx * sizeof(void *)) || !user)
		return 0;
	if (bpf_probe_read_kernel(&type, sizeof(type), user + UE_K_USER_TYPE))
		return 0;
	return (__u32)type;
}
#else
static __always_inline __u32 kernel_event_id(int fd, __u32 idx)
{
	return 0;
}
#endif

static __always_inline int exit_write(void *ctx, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, tgid = id >> 32, zero = 0;
	struct ue_call *c = ue_calls.lookup(&tid);
	if (!c)
		return 0;
	if (ret != -EFAULT) {
		ue_calls.delete(&tid);
		return 0;
	}
	struct ue_record *r = ue_scratch.lookup(&zero);
	if (!r) {
		ue_calls.delete(&tid);
		return 0;
	}
	/* The kernel faulted the payload in before failing: a failed entry read may succeed now. */
	if (!(c->flags & UE_F_INDEX) && !(c->flags & UE_F_SPLIT) && c->data_addr)
		read_index(c, c->data_addr);
	__u64 key = fd_key(tgid, c->fd);
	r->type = UE_REC_FAULT;
	r->sc = c->sc;
	r->flags = c->flags | (ue_fds.lookup(&key) ? UE_F_MARKED : 0);
	r->pid = tgid;
	r->tid = tid;
	r->fd = c->fd;
	r->ts = bpf_ktime_get_ns();
	r->ret = ret;
	r->addr = c->addr;
	r->count = c->count;
	r->data_addr = c->data_addr;
	r->write_index = c->write_index;
	r->index_err = c->index_err;
	r->name_len = 0;
	r->event_id = (c->flags & UE_F_INDEX) ? kernel_event_id(c->fd, c->write_index) : 0;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	if (ue_events.perf_submit(ctx, r, offsetof(struct ue_record, name)) == 0)
		ue_count(UE_ST_FAULT);
	else
		ue_count(UE_ST_SUBMIT_FAIL);
	ue_calls.delete(&tid);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
	return enter_write(args->fd, (__u64)args->buf, args->count, UE_SC_WRITE);
}

TRACEPOINT_PROBE(syscalls, sys_exit_write)
{
	return exit_write(args, args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_writev)
{
	return enter_write(args->fd, (__u64)args->vec, args->vlen, UE_SC_WRITEV);
}

TRACEPOINT_PROBE(syscalls, sys_exit_writev)
{
	return exit_write(args, args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
	if ((__u32)args->cmd != DIAG_IOCSREG)
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct ue_call c = {};
	c.fd = args->fd;
	c.addr = args->arg;
	c.sc = UE_SC_IOCTL;
	ue_calls.update(&tid, &c);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, tgid = id >> 32, zero = 0;
	struct ue_call *c = ue_calls.lookup(&tid);
	if (!c || c->sc != UE_SC_IOCTL)
		return 0;
	__u64 addr = c->addr;
	int fd = c->fd;
	ue_calls.delete(&tid);
	if (args->ret != 0)
		return 0;
	__u64 key = fd_key(tgid, fd);
	__u8 one = 1;
	ue_fds.update(&key, &one);
	struct ue_record *r = ue_scratch.lookup(&zero);
	if (!r)
		return 0;
	/* struct user_reg: write_index @24 (filled by the kernel), name_args @16. */
	__u64 name_ptr = 0;
	r->flags = UE_F_MARKED;
	r->index_err = bpf_probe_read_user(&r->write_index, 4, (void *)(addr + 24));
	if (r->index_err == 0)
		r->flags |= UE_F_INDEX;
	int n = 0;
	if (bpf_probe_read_user(&name_ptr, 8, (void *)(addr + 16)) == 0)
		n = bpf_probe_read_user_str(r->name, UE_NAME_CAP, (void *)name_ptr);
	r->name_len = n > 0 ? n - 1 : 0;
	if (n == UE_NAME_CAP)
		r->flags |= UE_F_NAME_TRUNC;
	r->type = UE_REC_REG;
	r->event_id = 0;
	r->sc = UE_SC_IOCTL;
	r->pid = tgid;
	r->tid = tid;
	r->fd = fd;
	r->ts = bpf_ktime_get_ns();
	r->ret = 0;
	r->addr = addr;
	r->count = 0;
	r->data_addr = name_ptr;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	if (ue_events.perf_submit(args, r, sizeof(*r)) == 0)
		ue_count(UE_ST_REG);
	else
		ue_count(UE_ST_SUBMIT_FAIL);
	return 0;
}

static __always_inline int enter_open(__u64 filename)
{
	__u32 zero = 0;
	struct ue_conf *conf = ue_conf_map.lookup(&zero);
	if (!conf || conf->path_len == 0)
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	ue_opens.update(&tid, &filename);
	return 0;
}

static __always_inline int exit_open(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, tgid = id >> 32, zero = 0;
	__u64 *fp = ue_opens.lookup(&tid);
	if (!fp)
		return 0;
	__u64 filename = *fp;
	ue_opens.delete(&tid);
	if (ret < 0)
		return 0;
	struct ue_conf *conf = ue_conf_map.lookup(&zero);
	struct ue_conf *buf = ue_pathbuf.lookup(&zero);
	if (!conf || !buf)
		return 0;
	/* Read at exit: the kernel's getname() has faulted the path in. */
	int n = bpf_probe_read_user_str(buf->path, UE_PATH_CAP, (void *)filename);
	if (n <= 0 || (__u32)(n - 1) != conf->path_len)
		return 0;
	for (int i = 0; i < UE_PATH_CAP; i++) {
		if (i >= conf->path_len)
			break;
		if (buf->path[i] != conf->path[i])
			return 0;
	}
	__u64 key = fd_key(tgid, (int)ret);
	__u8 one = 1;
	ue_fds.update(&key, &one);
	ue_count(UE_ST_MARKED_OPEN);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
	return enter_open((__u64)args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
	return exit_open(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
	return enter_open((__u64)args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
	return exit_open(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
	__u64 key = fd_key(bpf_get_current_pid_tgid() >> 32, args->fd);
	ue_fds.delete(&key);
	return 0;
}
