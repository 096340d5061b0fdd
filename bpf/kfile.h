/* The file the kernel installed at fd = ret, read at sys_exit of a successful open-family call: what the
 * kernel opened, whatever the caller's memory says afterwards.
 *
 * current->files->fdt->fd[ret] -> struct file: f_inode (i_ino, i_mode, i_sb->s_dev), f_flags, and f_path,
 * whose dentry chain is walked up (d_name, d_parent) to the process's root directory (current->fs->root),
 * crossing mount points through struct mount (container_of the vfsmount: mnt_parent, mnt_mountpoint),
 * as the kernel's d_path() does — without its rename_lock: a rename during the walk can mix names, as
 * with any reader outside the kernel's locks.
 *
 * Every offset is a KO_* define computed from the running kernel's BTF by tracer/kstructs.py; this file
 * is only compiled in when they are given (TRACER_KFILE). No struct layout comes from a header.
 */
#ifndef TRACER_KFILE_H
#define TRACER_KFILE_H

#include "record.h"

static __always_inline __u64 kptr(__u64 addr)
{
	__u64 v = 0;
	if (bpf_probe_read_kernel(&v, sizeof(v), (void *)addr))
		return 0;
	return v;
}

/* Fills the struct kfile (and its path components) at data[at]; returns the bytes used.
 *
 * The walk keeps its running state (size, nparts, status) in the struct in data[] — map memory, whose
 * loads the verifier does not track — rather than in registers or the stack: every path through one step
 * then reaches the next with the same verifier state and is pruned there, so verification stays linear in
 * KF_DEPTH (in registers, the mount-crossing and component paths would double the states at each step). */
static __always_inline __u32 kfile_read(__u8 *data, __u32 at, __s64 fd)
{
	__u64 kpos = at;
	if (kpos > DATA_CAP - sizeof(struct kfile))
		return 0;
	CLAMP(kpos, DATA_CAP - sizeof(struct kfile));
	struct kfile *k = (struct kfile *)&data[kpos];
	__builtin_memset(k, 0, sizeof(*k));
	k->size = sizeof(struct kfile);
	k->status = KF_FAULT;

	__u64 task = bpf_get_current_task();
	__u64 files = kptr(task + KO_TASK_FILES);
	__u64 fdt = files ? kptr(files + KO_FILES_FDT) : 0;
	__u32 max_fds = 0;
	__u64 file = 0, fdarr = 0;
	if (!files) {
		k->err = 1;
		return k->size;
	}
	if (!fdt || bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (void *)(fdt + KO_FDT_MAX_FDS))) {
		k->err = 2;
		return k->size;
	}
	if (fd < 0 || fd >= max_fds) {
		k->status = KF_NOFILE;
		return k->size;
	}
	fdarr = kptr(fdt + KO_FDT_FD);
	if (!fdarr) {
		k->err = 3;
		return k->size;
	}
	if (bpf_probe_read_kernel(&file, sizeof(file), (void *)(fdarr + fd * 8))) {
		k->err = 4;
		return k->size;
	}
	if (!file) {
		k->status = KF_NOFILE;
		return k->size;
	}
	__u64 inode = kptr(file + KO_FILE_INODE);
	if (!inode || bpf_probe_read_kernel(&k->ino, sizeof(k->ino), (void *)(inode + KO_INODE_INO)) ||
	    bpf_probe_read_kernel(&k->mode, sizeof(k->mode), (void *)(inode + KO_INODE_MODE))) {
		k->err = 5;
		return k->size;
	}
	__u64 sb = kptr(inode + KO_INODE_SB);
	if (sb)
		bpf_probe_read_kernel(&k->dev, sizeof(k->dev), (void *)(sb + KO_SB_DEV));
	bpf_probe_read_kernel(&k->f_flags, sizeof(k->f_flags), (void *)(file + KO_FILE_FLAGS));

	__u64 dentry = kptr(file + KO_FILE_PATH + KO_PATH_DENTRY);
	__u64 vfsmnt = kptr(file + KO_FILE_PATH + KO_PATH_MNT);
	__u64 fs = kptr(task + KO_TASK_FS);
	__u64 root_dentry = fs ? kptr(fs + KO_FS_ROOT + KO_PATH_DENTRY) : 0;
	__u64 root_mnt = fs ? kptr(fs + KO_FS_ROOT + KO_PATH_MNT) : 0;
	k->status = KF_TRUNC; /* unless the walk ends first */
	for (int i = 0; i < KF_DEPTH; i++) {
		if (!dentry || !vfsmnt) {
			k->status = KF_FAULT;
			k->err = 6;
			break;
		}
		if (dentry == root_dentry && vfsmnt == root_mnt) {
			k->status = KF_OK;
			break;
		}
		__u64 mnt = vfsmnt - KO_MOUNT_MNT; /* container_of(vfsmnt, struct mount, mnt) */
		if (dentry == kptr(vfsmnt + KO_VFSMOUNT_ROOT)) {
			__u64 parent = kptr(mnt + KO_MOUNT_PARENT);
			if (!parent || parent == mnt) { /* a namespace's root or a detached mount */
				k->status = KF_UNREACHABLE;
				break;
			}
			dentry = kptr(mnt + KO_MOUNT_MOUNTPOINT);
			vfsmnt = parent + KO_MOUNT_MNT;
			continue;
		}
		__u64 up = kptr(dentry + KO_DENTRY_PARENT);
		__u64 name = kptr(dentry + KO_DENTRY_NAME + KO_QSTR_NAME);
		__u64 pos = kpos + k->size;
		if (pos > DATA_CAP - KF_NAME)
			break; /* no room: KF_TRUNC */
		CLAMP(pos, DATA_CAP - KF_NAME);
		int n = name ? bpf_probe_read_kernel_str(&data[pos], KF_NAME, (void *)name) : -1;
		if (n <= 0) {
			k->status = KF_FAULT;
			k->err = 6;
			break;
		}
		k->size += n;
		k->nparts++;
		if (up == dentry) { /* a filesystem's root that is no mount's root here: pseudo fs, detached */
			k->status = KF_UNREACHABLE;
			break;
		}
		dentry = up;
	}
	return k->size;
}

#endif
