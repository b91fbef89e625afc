/*
 * io.h - the file operations of the log, with failure injection.
 *
 * Every write and sync of log data goes through here so that tests can make
 * the next one fail with a chosen errno (after writing part of the data, as
 * a full disk does) and check that nothing acknowledged is lost.
 */
#ifndef SL_IO_H
#define SL_IO_H

#include <stddef.h>
#include <sys/types.h>

/* Writes all n bytes at offset. Returns 0 or -errno (possibly after a
 * partial write: the caller truncates back). */
int sl_io_pwrite(int fd, const void *data, size_t n, off_t offset);

/* Reads up to n bytes at offset; returns the count (short at end of file)
 * or -errno. */
ssize_t sl_io_pread(int fd, void *data, size_t n, off_t offset);

/* fdatasync; 0 or -errno. */
int sl_io_sync(int fd);

/* How many data syncs this process has issued (for metrics and tests). */
unsigned long long sl_io_sync_count(void);

/* fsync of a directory, so that created and renamed entries are durable. */
int sl_io_sync_dir(const char *path);

/* Writes a whole small file atomically: path.tmp, fsync, rename, fsync of
 * the directory. Returns 0 or -errno. */
int sl_io_write_file(const char *path, const void *data, size_t n);

/* sl_io_read_file() is public: see storage.h. */

/* Removes a directory tree. Returns 0 or -errno. */
int sl_io_remove_tree(const char *path);

/* Test hooks: the next pwrite fails with err after writing at most
 * partial_bytes; the next sync fails with err. err 0 disarms. */
void sl_io_fail_next_write(int err, size_t partial_bytes);
void sl_io_fail_next_sync(int err);

#endif
