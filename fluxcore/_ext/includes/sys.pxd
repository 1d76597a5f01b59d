# POSIX and Linux calls the log engine makes directly (mapping, syncing, hole punching, locks).
from posix.types cimport off_t


cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t


cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)
    int msync(void *addr, size_t length, int flags)
    void *MAP_FAILED
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    int MS_SYNC
    int madvise(void *addr, size_t length, int advice)
    int MADV_DONTNEED


cdef extern from "<fcntl.h>" nogil:
    # _GNU_SOURCE is defined by pyconfig.h, which Cython includes first.
    int fallocate(int fd, int mode, off_t offset, off_t length)
    int FALLOC_FL_KEEP_SIZE
    int FALLOC_FL_PUNCH_HOLE
    int posix_fadvise(int fd, off_t offset, off_t length, int advice)  # returns the error
    int POSIX_FADV_DONTNEED


cdef extern from "<sys/stat.h>" nogil:
    cdef struct stat:
        off_t st_size
    int fstat(int fd, stat *buf)


cdef extern from "<unistd.h>" nogil:
    int close(int fd)


cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t pwritev(int fd, const iovec *iov, int iovcnt, off_t offset)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_trylock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)


cdef extern from "<sys/socket.h>" nogil:
    cdef struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL
