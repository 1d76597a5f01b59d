# Class layouts of the log engine; _log.pyx implements them.
from libc.stdint cimport int64_t, uint8_t, uint64_t

from fluxcore._ext.includes.fc cimport seg_header_t, seg_index_entry_t
from fluxcore._ext.includes.sys cimport pthread_mutex_t


cdef class SegmentFile:
    cdef:
        public str path
        readonly uint64_t first_index
        readonly bint writable
        readonly int exports          # buffer views of the mapping alive now
        char *base
        size_t size                   # mapped bytes (the file's size)
        Py_ssize_t shape[1]
        int fd
        seg_header_t *hdr
        seg_index_entry_t *entries
        uint64_t data_offset
        uint64_t index_capacity
        # Writer state (only meaningful while this file is the writer's active file):
        uint64_t write_offset         # end of the committed records; read by the sync thread
        uint64_t last_index           # index of the record just below write_offset (0: none)
        uint64_t index_count          # sparse-index entries published
        uint64_t next_entry_at        # offset at which the next entry is due
        uint64_t synced_offset        # records below this offset are on disk
        uint64_t cache_dropped        # below this offset the page cache was dropped (sync thread)
        uint64_t record_count         # records below write_offset
        uint64_t found_size           # the file's size when opened (short: it was cut)

    cdef int _map(self, size_t size, bint writable) except -1
    cdef int _zero_tail(self, uint64_t end) except -1
    cdef int _flush_range(self, uint64_t start, uint64_t stop) except -1
    cdef int drop_cache(self, uint64_t upto) except -1
    cdef int64_t _walk(self, uint64_t start, uint64_t limit, uint64_t verify_from,
                       uint64_t must_reach, bint rebuild_index, uint64_t *last_index,
                       uint64_t *count) noexcept nogil
    cdef uint64_t _claimed(self, uint64_t value) noexcept nogil
    cdef bint _entry_valid(self, uint64_t pos, uint64_t limit, bint verify) noexcept nogil
    cdef int check_header(self) except -1
    cdef int64_t _probe_valid_after(self, uint64_t bad, uint64_t last_index) noexcept nogil
    cdef void publish_entry(self, uint64_t off, uint64_t index) noexcept nogil
    cdef uint64_t entry_count(self) noexcept nogil
    cdef uint64_t seek(self, uint64_t after, bint verify) noexcept nogil
    cdef bint is_sealed_at(self, uint64_t offset) noexcept nogil
    cdef uint64_t committed(self) noexcept nogil
    cdef int _write_stage(self, char *stage, size_t used, uint64_t off,
                          int *error) noexcept nogil
    cdef Py_ssize_t append_records(
        self, const char **ptrs, const Py_ssize_t *lens, const uint8_t *segs,
        uint64_t base_index, Py_ssize_t start, Py_ssize_t stop) noexcept nogil
    cdef Py_ssize_t write_records(
        self, char *stage, size_t stage_size, const char **ptrs, const Py_ssize_t *lens,
        const uint8_t *segs, uint64_t base_index, Py_ssize_t start, Py_ssize_t stop,
        int *error) noexcept nogil
    cdef Py_ssize_t read_records(
        self, uint64_t *offset_io, Py_ssize_t max_count, uint64_t max_bytes,
        int seg_lo, int seg_hi, bint verify, int64_t *out_off, int64_t *out_len,
        uint64_t *out_idx, uint8_t *out_seg, uint64_t *last_scanned) noexcept nogil


cdef class Batch:
    cdef:
        readonly SegmentFile file
        readonly object indexes
        readonly object segments
        readonly object offsets
        readonly object lengths
        readonly uint64_t next_after
        Py_ssize_t count
        const char *base
        const int64_t *off_ptr
        const int64_t *len_ptr
        const uint64_t *idx_ptr


cdef class LogCore:
    cdef:
        public list _files            # SegmentFile, or None until first mapped
        public list _starts           # first index of each file, ascending
        public list _unsynced         # sealed files whose tail is not yet on disk
        public list _cached           # files whose synced records may be in the page cache
        public SegmentFile _active    # the file being appended to (writer), or None
        readonly bint readonly
        readonly bint closed
        readonly uint64_t segment_file_size
        readonly uint64_t durable_index
        readonly uint64_t appended
        uint64_t _last_index
        int _fsync_mode
        # `interval` policy: records appended since the last sync's snapshot, and the log is
        # (or is about to be) due in the sync scheduler. Set and cleared under the append lock.
        readonly bint sync_pending
        uint64_t _cache_window        # synced bytes left in the page cache (0: no limit)
        pthread_mutex_t _append_mu
        pthread_mutex_t _sync_mu
        # scratch arrays for gathering a batch; grown on demand, freed on dealloc
        const char **_ptrs
        Py_ssize_t *_lens
        uint8_t *_segs
        Py_ssize_t _scratch_cap
        char *_stage                  # records of a batch are built here, then pwrite()n
        # read cursor: where the read after `_cur_after` starts
        uint64_t _cur_after
        uint64_t _cur_start
        uint64_t _cur_offset
        bint _cur_valid

    cdef int _check_writable(self) except -1
    cdef int _lock_append(self) except -1
    cdef int _lock_append_open(self) except -1
    cdef bint _mark_dirty(self) noexcept
    cdef int _grow_scratch(self, Py_ssize_t n) except -1
    cdef uint64_t _max_payload(self)
    cdef object _append_gathered(self, Py_ssize_t n, object keys, object segments,
                                 uint64_t first_index=*)
    cdef int _trim_page_cache(self, list synced, SegmentFile active) except -1
    cdef SegmentFile _file_at(self, Py_ssize_t pos)
    cdef Py_ssize_t _locate(self, uint64_t after, uint64_t *offset, bint verify) except -2
    cdef Batch _read(self, uint64_t after, Py_ssize_t max_count, uint64_t max_bytes,
                     int seg_lo, int seg_hi, bint verify)
