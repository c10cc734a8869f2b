// SPDX-License-Identifier: Apache-2.0
// The subset of the Linux FUSE kernel ABI (include/uapi/linux/fuse.h, protocol 7.x) that the loopsnap
// data path speaks. All structures are little-endian, padded to 8 bytes; sizes below are in bytes.
//
//   request  = fuse_in_header (40) | op-specific struct | op-specific payload (names, write data)
//   reply    = fuse_out_header (16) | op-specific struct | payload (read data, dirents)
//   notify   = fuse_out_header with unique = 0 and error = notify code | notify struct | payload

export const FUSE_KERNEL_VERSION = 7;
/** The minor version we implement. Newer kernels adapt to it; every flag we ask for exists at 7.31. */
export const FUSE_OUR_MINOR_VERSION = 31;
export const FUSE_ROOT_ID = 1;

/** A /dev/fuse read buffer must hold the largest WRITE: header + fuse_write_in + max_write. */
export const FUSE_MIN_READ_BUFFER_BYTES = 8192;
export const FUSE_REQUEST_HEADROOM_BYTES = 4096;
/** Largest READ/WRITE payload we negotiate (max_pages 256 × 4 KiB, the kernel's fs.fuse.max_pages_limit). */
export const FUSE_MAX_IO_BYTES = 1024 * 1024;
export const FUSE_MAX_PAGES = 256;

export const IN_HEADER_BYTES = 40;
export const OUT_HEADER_BYTES = 16;
export const ATTR_BYTES = 88;
export const ENTRY_OUT_BYTES = 40 + ATTR_BYTES; // 128
export const ATTR_OUT_BYTES = 16 + ATTR_BYTES; // 104
export const INIT_IN_MIN_BYTES = 16; // major, minor, max_readahead, flags (flags2 and unused since 7.36)
export const INIT_OUT_BYTES = 64;
export const OPEN_IN_BYTES = 8;
export const OPEN_OUT_BYTES = 16;
export const READ_IN_BYTES = 40;
export const WRITE_IN_BYTES = 40;
export const WRITE_OUT_BYTES = 8;
/** Where a WRITE's payload starts in the request (fuse_in_header + fuse_write_in). */
export const WRITE_PAYLOAD_OFFSET = 40 + 40;
export const RELEASE_IN_BYTES = 24;
export const FLUSH_IN_BYTES = 24;
export const FSYNC_IN_BYTES = 16;
export const FALLOCATE_IN_BYTES = 32;
export const GETATTR_IN_BYTES = 16;
export const SETATTR_IN_BYTES = 88;
export const STATFS_OUT_BYTES = 80;
export const INTERRUPT_IN_BYTES = 8;
export const FORGET_IN_BYTES = 8;
export const BATCH_FORGET_IN_BYTES = 8;
export const FORGET_ONE_BYTES = 16;
export const DIRENT_HEADER_BYTES = 24; // ino, off, namelen, type; name follows, record padded to 8
export const NOTIFY_INVAL_ENTRY_OUT_BYTES = 16;
/** fuse_notify_inval_inode_out: ino u64, off i64, len i64. */
export const NOTIFY_INVAL_INODE_OUT_BYTES = 24;

export const Opcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
} as const;

export const OPCODE_NAMES: Readonly<Record<number, string>> = {
  1: 'LOOKUP',
  2: 'FORGET',
  3: 'GETATTR',
  4: 'SETATTR',
  14: 'OPEN',
  15: 'READ',
  16: 'WRITE',
  17: 'STATFS',
  18: 'RELEASE',
  20: 'FSYNC',
  25: 'FLUSH',
  26: 'INIT',
  27: 'OPENDIR',
  28: 'READDIR',
  29: 'RELEASEDIR',
  30: 'FSYNCDIR',
  36: 'INTERRUPT',
  38: 'DESTROY',
  42: 'BATCH_FORGET',
  43: 'FALLOCATE',
};

/** INIT flags (fuse_init_in.flags / fuse_init_out.flags). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  ATOMIC_O_TRUNC: 1 << 3,
  BIG_WRITES: 1 << 5,
  ASYNC_DIO: 1 << 15,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
} as const;

/** fuse_open_out.open_flags. */
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;

/** fuse_setattr_in.valid bits. */
export const FATTR_SIZE = 1 << 3;

/** fuse_fsync_in.fsync_flags. */
export const FUSE_FSYNC_FDATASYNC = 1 << 0;

/** fallocate(2) modes seen in FUSE_FALLOCATE. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** Notify codes (fuse_notify_code). INVAL_INODE drops cached attributes (and, for off >= 0, pages). */
export const FUSE_NOTIFY_INVAL_INODE = 2;
export const FUSE_NOTIFY_INVAL_ENTRY = 3;
/**
 * RESEND (Linux 6.9+): the kernel moves every request of the connection's processing lists (read by a server
 * but not answered) back to the pending queue, with bit 63 of `unique` set; replies echo that unique.
 */
export const FUSE_NOTIFY_RESEND = 7;

/** Linux errno values used in replies (positive; replies carry them negated). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  EPROTO: 71,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ENOTCONN: 107,
  ESTALE: 116,
} as const;

/** File type bits of st_mode and the dirent type (DT_*) values. */
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const DT_DIR = 4;
export const DT_REG = 8;

/** open(2) access mode mask and values. */
export const O_ACCMODE = 3;
export const O_RDONLY = 0;
