/*
 * io.c - file operations with failure injection (see io.h).
 */
#include "storage/io.h"
#include "storage/storage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static _Atomic int write_failure;
static _Atomic size_t write_failure_partial;
static _Atomic int sync_failure;
static atomic_ullong sync_count;

void sl_io_fail_next_write(int err, size_t partial_bytes)
{
    atomic_store(&write_failure_partial, partial_bytes);
    atomic_store(&write_failure, err);
}

void sl_io_fail_next_sync(int err)
{
    atomic_store(&sync_failure, err);
}

static int injected_write(int fd, const void *data, size_t n, off_t offset)
{
    int err = atomic_exchange(&write_failure, 0);
    if (!err)
        return 0;
    size_t partial = atomic_load(&write_failure_partial);
    if (partial > n)
        partial = n;
    if (partial && pwrite(fd, data, partial, offset) < 0)
        return -errno;
    return -err;
}

int sl_io_pwrite(int fd, const void *data, size_t n, off_t offset)
{
    int rc = injected_write(fd, data, n, offset);
    if (rc)
        return rc;
    const char *p = data;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, offset);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        if (w == 0)
            return -ENOSPC;
        p += w;
        n -= (size_t)w;
        offset += w;
    }
    return 0;
}

ssize_t sl_io_pread(int fd, void *data, size_t n, off_t offset)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)data + done, n - done, offset + (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

unsigned long long sl_io_sync_count(void)
{
    return atomic_load(&sync_count);
}

int sl_io_sync(int fd)
{
    atomic_fetch_add(&sync_count, 1);
    int err = atomic_exchange(&sync_failure, 0);
    if (err)
        return -err;
    return fdatasync(fd) ? -errno : 0;
}

int sl_io_sync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

static int parent_dir(const char *path, char *out, size_t size)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return snprintf(out, size, ".") < (int)size ? 0 : -ENAMETOOLONG;
    size_t n = (size_t)(slash - path);
    if (n + 1 > size)
        return -ENAMETOOLONG;
    memcpy(out, path, n);
    out[n] = 0;
    return 0;
}

int sl_io_write_file(const char *path, const void *data, size_t n)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp ||
        parent_dir(path, dir, sizeof dir))
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int rc = sl_io_pwrite(fd, data, n, 0);
    if (!rc && fsync(fd))
        rc = -errno;
    close(fd);
    if (!rc && rename(tmp, path))
        rc = -errno;
    if (rc) {
        unlink(tmp);
        return rc;
    }
    return sl_io_sync_dir(dir);
}

int sl_io_read_file(const char *path, char **data, size_t *n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = fstat(fd, &st) ? -errno : 0;
    char *buf = rc ? NULL : sl_malloc((size_t)st.st_size + 1);
    if (!rc && !buf)
        rc = -ENOMEM;
    ssize_t r = rc ? 0 : sl_io_pread(fd, buf, (size_t)st.st_size, 0);
    if (!rc && r < 0)
        rc = (int)r;
    close(fd);
    if (rc) {
        sl_free(buf);
        return rc;
    }
    buf[r] = 0;
    *data = buf;
    *n = (size_t)r;
    return 0;
}

int sl_io_remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return errno == ENOTDIR ? (unlink(path) ? -errno : 0) : -errno;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char child[PATH_MAX];
        if (snprintf(child, sizeof child, "%s/%s", path, e->d_name) >= (int)sizeof child) {
            rc = -ENAMETOOLONG;
            continue;
        }
        int r = sl_io_remove_tree(child);
        if (r && !rc)
            rc = r;
    }
    closedir(d);
    if (rmdir(path) && !rc)
        rc = -errno;
    return rc;
}
