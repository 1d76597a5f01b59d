# SegmentFile: one preallocated, memory-mapped file of records.
#
# Layout: a 4 KiB header page, the sparse-index region (one entry per 4 KiB of records), then
# 8-byte aligned records from data_offset. Readers (any process) read the mapping, below the
# header's committed_end only. The writer writes a batch with pwrite (the page cache takes it in
# large folios: no page faults, and no pages dirtied ahead of the data, which would make every
# sync write them twice), a single record through the mapping; then it moves committed_end.
# Files are never resized while mapped.


cdef inline uint64_t page_up(uint64_t n) noexcept nogil:
    return (n + PAGE - 1) & ~(<uint64_t>PAGE - 1)


cdef inline int64_t rec_check(const char *base, uint64_t off, uint64_t limit,
                              bint verify) noexcept nogil:
    """Length of the record at `off` in a scan for the end of the records (recovery): 0 at a
    zero length word or where no header fits; -1 if damaged."""
    cdef const rec_header_t *h
    cdef uint32_t length
    if off + REC_HEADER_SIZE > limit:
        return 0
    h = <const rec_header_t *>(base + off)
    length = seg_load_u32(&h.length)
    if length == 0:
        return 0
    if length < REC_HEADER_SIZE or off + length > limit:
        return -1
    if verify and rec_crc(base + off, length) != h.crc:
        return -1
    return length


cdef inline int64_t rec_span(const char *base, uint64_t off, uint64_t limit) noexcept nogil:
    """Length of the record at `off` below `limit`, a committed end: every byte below it belongs
    to a record, so anything but a record that fits is damage (-1); 0 at `limit` or past it.
    The CRC is not checked here."""
    cdef uint32_t length
    if off >= limit:
        return 0
    if off + REC_HEADER_SIZE > limit:
        return -1
    length = seg_load_u32(&(<const rec_header_t *>(base + off)).length)
    if length < REC_HEADER_SIZE or off + rec_stride(length) > limit:
        return -1
    return length


cdef inline bint rec_crc_ok(const char *rec, uint32_t length) noexcept nogil:
    return rec_crc(rec, length) == (<const rec_header_t *>rec).crc


# Byte offsets of the header fields a reader depends on (named in CorruptLogError).
cdef enum:
    HDR_SEALED_END = 64
    HDR_CHECKPOINT_OFFSET = 72
    HDR_COMMITTED_END = 88


cdef Py_ssize_t keep_before(uint64_t bad, Py_ssize_t count, const int64_t *out_off,
                            const uint64_t *out_idx, uint64_t *offset_io,
                            uint64_t *last_scanned) noexcept nogil:
    """A read met a damaged record at `bad`: keeps the records collected before it (the next
    read starts at `bad` and reports it), or -1 if there are none."""
    while count > 0 and <uint64_t>out_off[count - 1] > bad:
        count -= 1
    offset_io[0] = bad
    if count == 0:
        return -1
    last_scanned[0] = out_idx[count - 1]
    return count


cdef int write_fully(int fd, iovec *iov, int count, uint64_t off, uint64_t total,
                     int *error) noexcept nogil:
    """pwritev until `total` bytes are written (a write may be short); -1 and *error else."""
    cdef ssize_t n
    cdef uint64_t done = 0
    while done < total:
        n = pwritev(fd, iov, count, <off_t>(off + done))
        if n < 0:
            if errno == EINTR:
                continue
            error[0] = errno
            return -1
        if n == 0:
            error[0] = EIO
            return -1
        done += <uint64_t>n
        while count > 0 and <size_t>n >= iov[0].iov_len:  # skip what was written
            n -= <ssize_t>iov[0].iov_len
            iov += 1
            count -= 1
        if count > 0:
            iov[0].iov_base = (<char *>iov[0].iov_base) + n
            iov[0].iov_len -= <size_t>n
    return 0


cdef uint64_t layout_data_offset(uint64_t file_size, uint64_t *capacity) noexcept nogil:
    capacity[0] = (file_size - SEG_HEADER_SIZE) // SEG_INDEX_STRIDE + 2
    return page_up(SEG_HEADER_SIZE + capacity[0] * sizeof(seg_index_entry_t))


def max_payload_for(uint64_t file_size):
    """The largest payload a segment file of this size holds."""
    cdef uint64_t capacity
    return file_size - layout_data_offset(file_size, &capacity) - REC_HEADER_SIZE


@cython.final
cdef class SegmentFile:

    def __cinit__(self):
        self.fd = -1
        self.base = NULL

    def __dealloc__(self):
        # Reached only when no Batch and no buffer view refers to this file any more.
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("segment file views are read-only")
        if self.base == NULL:
            raise BufferError("segment file is not mapped")
        self.shape[0] = <Py_ssize_t>self.size
        buffer.buf = self.base
        buffer.len = <Py_ssize_t>self.size
        buffer.readonly = 1
        buffer.itemsize = 1
        buffer.format = "B"
        buffer.ndim = 1
        buffer.shape = self.shape
        buffer.strides = NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL
        buffer.obj = self
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.exports -= 1

    def __repr__(self):
        return f"<SegmentFile {self.path!r} first_index={self.first_index}>"

    cdef int _map(self, size_t size, bint writable) except -1:
        cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
        cdef void *p = mmap(NULL, size, prot, MAP_SHARED, self.fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, f"mmap of {self.path} failed: {os.strerror(errno)}")
        self.base = <char *>p
        self.size = size
        self.writable = writable
        self.hdr = <seg_header_t *>p
        return 0

    @property
    def data_offset(self):
        return self.data_offset

    @property
    def write_offset(self):
        return seg_load_u64(&self.write_offset)

    @property
    def last_index(self):
        return self.last_index

    @property
    def sealed_end(self):
        return seg_load_u64(&self.hdr.sealed_end)

    @property
    def checkpoint_offset(self):
        return self.hdr.checkpoint_offset

    @property
    def file_size(self):
        return self.size

    @property
    def published_records(self):
        """How many records the header says the file holds."""
        return seg_load_u64(&self.hdr.record_count)

    @property
    def committed_end(self):
        return self.committed()

    cdef uint64_t entry_count(self) noexcept nogil:
        # Entries are published in order, so the valid ones are a prefix: binary search for it.
        cdef uint64_t lo = 0, hi = self.index_capacity, mid
        if self.writable:
            return self.index_count
        while lo < hi:
            mid = (lo + hi) // 2
            if seg_load_u64(&self.entries[mid].index) != 0:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef bint _entry_valid(self, uint64_t pos, uint64_t limit, bint verify) noexcept nogil:
        """True if sparse-index entry `pos` points at a record of its index (a damaged entry
        must not send a reader past records it has not read)."""
        cdef uint64_t index = seg_load_u64(&self.entries[pos].index)
        cdef uint64_t off = self.entries[pos].offset
        cdef int64_t length
        if off < self.data_offset or off % REC_ALIGN:
            return False
        length = rec_span(self.base, off, limit)
        if length <= 0 or (<const rec_header_t *>(self.base + off)).index != index:
            return False
        return not verify or rec_crc_ok(self.base + off, <uint32_t>length)

    cdef uint64_t seek(self, uint64_t after, bint verify) noexcept nogil:
        """Offset of the first record with index > after, of the end of the records, or of
        the first damaged record on the way (the read that follows reports it)."""
        cdef uint64_t lo = 0, hi = self.entry_count(), mid
        cdef uint64_t off = self.data_offset
        cdef uint64_t limit = self.committed()
        cdef int64_t length
        while lo < hi:  # last entry with index <= after
            mid = (lo + hi) // 2
            if seg_load_u64(&self.entries[mid].index) <= after:
                lo = mid + 1
            else:
                hi = mid
        # A damaged entry (its record is not there, or its index is past `after`): start from
        # an earlier one. Slower, never wrong: the records before a valid entry <= after are.
        while lo > 0:
            if (seg_load_u64(&self.entries[lo - 1].index) <= after
                    and self._entry_valid(lo - 1, limit, verify)):
                off = self.entries[lo - 1].offset
                break
            lo -= 1
        while True:  # at most one index stride of records
            length = rec_span(self.base, off, limit)
            if length <= 0 or (verify and not rec_crc_ok(self.base + off, <uint32_t>length)):
                return off
            if (<const rec_header_t *>(self.base + off)).index > after:
                return off
            off += rec_stride(<uint64_t>length)

    cdef uint64_t committed(self) noexcept nogil:
        # Clamped to the mapping: a damaged header must not send a reader past its end
        # (check_header reports the damage).
        cdef uint64_t end = seg_load_u64(&self.hdr.committed_end)
        return end if end <= self.size else self.size

    cdef int check_header(self) except -1:
        """Raises CorruptLogError if the header fields a reader relies on contradict each
        other: checkpoint <= committed end <= file size, and a sealed file ends at its seal."""
        cdef uint64_t checkpoint = seg_load_u64(&self.hdr.checkpoint_offset)
        cdef uint64_t sealed = seg_load_u64(&self.hdr.sealed_end)
        cdef uint64_t end = seg_load_u64(&self.hdr.committed_end)
        if end < self.data_offset or end > self.size or end % REC_ALIGN:
            raise CorruptLogError(self.path, HDR_COMMITTED_END,
                                  f"damaged header: committed end {end} is outside the records")
        if sealed and sealed != end:
            raise CorruptLogError(self.path, HDR_SEALED_END, f"damaged header: sealed at "
                                  f"{sealed} but records are committed up to {end}")
        if checkpoint > end:
            raise CorruptLogError(self.path, HDR_CHECKPOINT_OFFSET, f"damaged header: "
                                  f"checkpoint {checkpoint} is past the committed end {end}")
        return 0

    cdef bint is_sealed_at(self, uint64_t offset) noexcept nogil:
        cdef uint64_t end = seg_load_u64(&self.hdr.sealed_end)
        return end != 0 and offset >= end

    cdef void publish_entry(self, uint64_t off, uint64_t index) noexcept nogil:
        cdef seg_index_entry_t *e
        if off >= self.next_entry_at and self.index_count < self.index_capacity:
            e = &self.entries[self.index_count]
            e.offset = off
            seg_store_u64(&e.index, index)
            self.index_count += 1
            self.next_entry_at = self.data_offset + (
                (off - self.data_offset) // SEG_INDEX_STRIDE + 1) * SEG_INDEX_STRIDE

    cdef Py_ssize_t append_records(
            self, const char **ptrs, const Py_ssize_t *lens, const uint8_t *segs,
            uint64_t base_index, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
        """Writes records start..stop-1 through the mapping while they fit (for one or a few
        small records, cheaper than a system call); returns how many were written."""
        cdef uint64_t off = self.write_offset
        cdef uint64_t limit = self.size
        cdef uint32_t length
        cdef uint64_t index = 0
        cdef rec_header_t *h
        cdef Py_ssize_t i = start
        while i < stop:
            length = <uint32_t>(REC_HEADER_SIZE + lens[i])
            if off + length > limit:
                break
            index = base_index + <uint64_t>i
            h = <rec_header_t *>(self.base + off)
            h.index = index
            h.segment = segs[i]
            h.flags = 0
            h.reserved = 0
            memcpy(self.base + off + REC_HEADER_SIZE, ptrs[i], <size_t>lens[i])
            h.crc = rec_crc(self.base + off, length)
            seg_store_u32(&h.length, length)  # commit: the record is readable from here on
            self.publish_entry(off, index)
            off += rec_stride(length)
            i += 1
        if i > start:
            self.last_index = index
            self.record_count += <uint64_t>(i - start)
            seg_store_u64(&self.write_offset, off)
            seg_store_u64(&self.hdr.record_count, self.record_count)
            seg_store_u64(&self.hdr.committed_end, off)  # publish
        return i - start

    cdef Py_ssize_t write_records(
            self, char *stage, size_t stage_size, const char **ptrs, const Py_ssize_t *lens,
            const uint8_t *segs, uint64_t base_index, Py_ssize_t start, Py_ssize_t stop,
            int *error) noexcept nogil:
        """Writes records start..stop-1 while they fit: built in `stage` and written with
        pwrite a stage at a time (a record larger than the stage straight from its payload,
        with pwritev), then published together. Returns how many were written; on a write
        error, none of them: *error is the errno, nothing is published and the sparse index is
        as it was (the next append overwrites what was written)."""
        cdef uint64_t start_off = self.write_offset
        cdef uint64_t off = start_off  # file offset of the stage's first byte
        cdef uint64_t limit = self.size
        cdef uint64_t entries_before = self.index_count
        cdef uint64_t next_entry_before = self.next_entry_at
        cdef uint64_t last = 0
        cdef size_t used = 0
        cdef Py_ssize_t i = start
        cdef uint32_t length
        cdef uint64_t stride
        cdef rec_header_t *h
        cdef rec_header_t big
        cdef iovec iov[3]
        cdef char padding[8]
        error[0] = 0
        memset(padding, 0, 8)
        while i < stop:
            length = <uint32_t>(REC_HEADER_SIZE + lens[i])
            stride = rec_stride(length)
            if off + used + length > limit:
                break
            last = base_index + <uint64_t>i
            if used + stride > stage_size:
                if used:
                    if self._write_stage(stage, used, off, error) < 0:
                        break
                    off += used
                    used = 0
                if stride > stage_size:  # too big for the stage: write it from where it is
                    big.length = length
                    big.index = last
                    big.segment = segs[i]
                    big.flags = 0
                    big.reserved = 0
                    big.crc = crc32c_value(crc32c_value(crc32c_value(0, &length, 4),
                                                        (<char *>&big) + 8, REC_HEADER_SIZE - 8),
                                           ptrs[i], <size_t>lens[i])
                    iov[0].iov_base = &big
                    iov[0].iov_len = REC_HEADER_SIZE
                    iov[1].iov_base = <void *>ptrs[i]
                    iov[1].iov_len = <size_t>lens[i]
                    iov[2].iov_base = padding
                    iov[2].iov_len = stride - length
                    if write_fully(self.fd, iov, 3, off, stride, error) < 0:
                        break
                    self.publish_entry(off, last)
                    off += stride
                    i += 1
                    continue
            h = <rec_header_t *>(stage + used)
            h.length = length
            h.index = last
            h.segment = segs[i]
            h.flags = 0
            h.reserved = 0
            memcpy(stage + used + REC_HEADER_SIZE, ptrs[i], <size_t>lens[i])
            if stride > length:
                memset(stage + used + length, 0, stride - length)
            used += stride  # its CRC is filled in with the stage's others, before the write
            i += 1
        if used and error[0] == 0 and self._write_stage(stage, used, off, error) == 0:
            off += used
        if error[0] != 0:
            # Nothing of it becomes visible: unpublish the index entries made on the way.
            memset(&self.entries[entries_before], 0,
                   (self.index_count - entries_before) * sizeof(seg_index_entry_t))
            self.index_count = entries_before
            self.next_entry_at = next_entry_before
            return 0
        if i > start:
            self.last_index = last
            self.record_count += <uint64_t>(i - start)
            seg_store_u64(&self.write_offset, off)
            seg_store_u64(&self.hdr.record_count, self.record_count)
            seg_store_u64(&self.hdr.committed_end, off)  # readers may read up to here now
        return i - start

    cdef int _write_stage(self, char *stage, size_t used, uint64_t off,
                          int *error) noexcept nogil:
        """Fills in the CRCs of a built stage, writes it at `off` and adds its records to the
        sparse index (readers do not use entries past committed_end); -1 and *error if the
        write failed."""
        cdef iovec iov[1]
        cdef size_t pos = 0
        cdef uint32_t length
        cdef uint64_t index
        rec_fill_crcs(stage, used)
        iov[0].iov_base = <void *>stage
        iov[0].iov_len = used
        if write_fully(self.fd, iov, 1, off, used, error) < 0:
            return -1
        while pos < used:
            memcpy(&length, stage + pos, 4)
            memcpy(&index, stage + pos + 8, 8)
            self.publish_entry(off + pos, index)
            pos += rec_stride(length)
        return 0

    cdef Py_ssize_t read_records(
            self, uint64_t *offset_io, Py_ssize_t max_count, uint64_t max_bytes,
            int seg_lo, int seg_hi, bint verify, int64_t *out_off, int64_t *out_len,
            uint64_t *out_idx, uint8_t *out_seg, uint64_t *last_scanned) noexcept nogil:
        """Collects records from *offset_io on; returns the count. At a damaged record, the
        records before it (*offset_io is then its offset, so the next read starts there), or
        -1 if there are none. With `verify`, every record passed over is CRC-checked, three at
        a time; records collected past a damaged one are dropped before the return."""
        cdef uint64_t off = offset_io[0]
        cdef uint64_t total = 0
        cdef int64_t length
        cdef uint64_t payload
        cdef const rec_header_t *h
        cdef Py_ssize_t count = 0
        cdef uint64_t limit = self.committed()
        cdef const char *pending[3]
        cdef int npending = 0, bad
        while count < max_count:
            length = rec_span(self.base, off, limit)
            if length == 0:
                break
            if length < 0:
                if npending:  # a damaged record among those still to check comes first
                    bad = rec_verify3(pending, npending)
                    if bad >= 0:
                        off = <uint64_t>(pending[bad] - self.base)
                return keep_before(off, count, out_off, out_idx, offset_io, last_scanned)
            h = <const rec_header_t *>(self.base + off)
            if seg_lo <= h.segment < seg_hi:
                payload = <uint64_t>length - REC_HEADER_SIZE
                if count > 0 and total + payload > max_bytes:
                    break
                total += payload
                out_off[count] = <int64_t>(off + REC_HEADER_SIZE)
                out_len[count] = <int64_t>payload
                out_idx[count] = h.index
                out_seg[count] = <uint8_t>h.segment
                count += 1
            if verify:
                pending[npending] = self.base + off
                npending += 1
                if npending == 3:
                    bad = rec_verify3(pending, 3)
                    if bad >= 0:
                        return keep_before(<uint64_t>(pending[bad] - self.base), count,
                                           out_off, out_idx, offset_io, last_scanned)
                    npending = 0
            last_scanned[0] = h.index
            off += rec_stride(<uint64_t>length)
        if npending:
            bad = rec_verify3(pending, npending)
            if bad >= 0:
                return keep_before(<uint64_t>(pending[bad] - self.base), count, out_off,
                                   out_idx, offset_io, last_scanned)
        offset_io[0] = off
        return count

    cdef int64_t _walk(self, uint64_t start, uint64_t limit, uint64_t verify_from,
                       uint64_t must_reach, bint rebuild_index, uint64_t *last_index,
                       uint64_t *count) noexcept nogil:
        """Walks records from `start`; returns the end offset, or -(offset)-1 of a damaged
        record (bad length, bad CRC at or past verify_from, an index that does not grow, or
        the records ending before `must_reach`)."""
        cdef uint64_t off = start
        cdef int64_t length
        cdef uint64_t index
        while True:
            length = rec_check(self.base, off, limit, off >= verify_from)
            if length == 0:
                if off < must_reach:
                    return -<int64_t>off - 1
                return <int64_t>off
            if length < 0:
                return -<int64_t>off - 1
            index = (<const rec_header_t *>(self.base + off)).index
            if index <= last_index[0]:
                return -<int64_t>off - 1
            if rebuild_index:
                self.publish_entry(off, index)
            last_index[0] = index
            count[0] += 1
            off += rec_stride(<uint64_t>length)

    cdef int64_t _probe_valid_after(self, uint64_t bad, uint64_t last_index) noexcept nogil:
        """Offset of the first intact record after a damaged one, or -1 (torn tail)."""
        cdef uint64_t off = bad + 8
        cdef int64_t length
        while off + REC_HEADER_SIZE <= self.size:
            length = rec_check(self.base, off, self.size, True)
            if length > 0 and (<const rec_header_t *>(self.base + off)).index > last_index:
                return <int64_t>off
            off += 8
        return -1

    cdef uint64_t _claimed(self, uint64_t value) noexcept nogil:
        """A header offset if it could be the end of records; data_offset if not."""
        if value < self.data_offset or value > self.size or value % REC_ALIGN:
            return self.data_offset
        return value

    def recover(self, bint repair, uint64_t previous_last_index, uint64_t damaged_at=0):
        """Opening the writer's last file: verify the records past the checkpoint (all of them
        if the file was cut short), rebuild the sparse index, cut a damaged or torn tail and
        zero what lies beyond it.

        The header says how far the records reached (committed end, checkpoint) and how many
        were published: records missing below that are damage, not the end of the log. Damage
        followed by intact records is corruption: CorruptLogError, or with repair=True a cut
        there as well. At the tail (nothing intact after it), the file is cut and the published
        records lost are counted in `dropped_records`. `damaged_at`: the offset of a record
        that a full verify found damaged (below the checkpoint too); verified from there."""
        cdef uint64_t last = previous_last_index, count = 0, seen = 0, dropped_bytes = 0
        cdef uint64_t verify_from = self.hdr.checkpoint_offset
        cdef uint64_t sealed = self.hdr.sealed_end
        cdef uint64_t claimed_end = max(self._claimed(self.hdr.committed_end),
                                        self._claimed(self.hdr.checkpoint_offset))
        cdef uint64_t claimed_count = self.hdr.record_count, lost = 0
        cdef bint cut_short = self.found_size < self.size
        cdef uint64_t limit, end, bad, tail_last, damage_end
        cdef int64_t walked, probe, length
        if sealed and self._claimed(sealed) != sealed:
            if not repair:
                raise CorruptLogError(self.path, HDR_SEALED_END,
                                      f"damaged header: sealed at {sealed}, outside the records")
            sealed = 0
        if sealed:
            claimed_end = max(claimed_end, sealed)
        limit = sealed if sealed and not cut_short else self.size
        if verify_from < self.data_offset or verify_from > self.size or cut_short:
            verify_from = self.data_offset
        if damaged_at and damaged_at < verify_from:
            verify_from = max(damaged_at, self.data_offset)
        self.index_count = 0
        self.next_entry_at = self.data_offset
        with nogil:
            walked = self._walk(self.data_offset, limit, verify_from, claimed_end, True, &last,
                                &count)
        if walked >= 0:
            end = <uint64_t>walked
            if sealed and end != sealed:
                raise CorruptLogError(self.path, end, f"records end at {end}, the file was "
                                      f"sealed at {sealed}")
        else:
            bad = <uint64_t>(-walked - 1)
            probe = self._probe_valid_after(bad, last)
            if probe >= 0 or (not cut_short and (sealed or bad < verify_from)):
                if not repair:
                    raise CorruptLogError(
                        self.path, bad, "damaged record (bad length, CRC or index) followed by "
                        "intact records; open with repair=True to truncate the log there"
                        if probe >= 0 else "damaged record in synced records (bad length, CRC "
                        "or index); open with repair=True to truncate the log there")
            length = rec_check(self.base, bad, self.size, False)
            damage_end = bad + (rec_stride(<uint64_t>length) if length > 0 else 0)
            if length > 0 and bad < claimed_end:
                seen = 1  # the damaged record had been published
            if probe >= 0:
                tail_last = last
                walked = self._walk(<uint64_t>probe, self.size, self.size, 0, False,
                                    &tail_last, &seen)
                damage_end = max(damage_end, <uint64_t>(walked if walked >= 0 else -walked - 1))
            # Published records that are gone (the header counted them): the file was cut,
            # or zeros where records were. Not when only a header field overstates the end.
            lost = claimed_count - count if claimed_count > count else 0
            if lost:
                damage_end = max(damage_end, claimed_end)
            dropped_bytes = damage_end - bad
            end = bad
            if sealed:
                self.hdr.sealed_end = 0
        # Unpublish stale sparse-index entries past the rebuilt ones.
        memset(&self.entries[self.index_count], 0,
               (self.index_capacity - self.index_count) * sizeof(seg_index_entry_t))
        self.write_offset = end
        self.last_index = last if count else 0
        self.record_count = count
        if not self.hdr.sealed_end:
            self._zero_tail(end)
        seg_store_u64(&self.hdr.checkpoint_offset, end)
        self.hdr.checkpoint_index = self.last_index
        seg_store_u64(&self.hdr.record_count, count)
        seg_store_u64(&self.hdr.committed_end, end)
        self._flush_range(self.data_offset if verify_from > end else verify_from, end)
        self.synced_offset = end
        return {"records": count, "truncated_bytes": dropped_bytes,
                "dropped_records": max(seen, lost),
                "cut_short": self.found_size if cut_short else 0}

    cdef int _zero_tail(self, uint64_t end) except -1:
        # Bytes past the last record may hold the body of a record whose length word never
        # landed; the next append must not find them. Punch the whole pages out (fast, no
        # writes), re-reserve them so later appends cannot hit ENOSPC, zero the partial page.
        cdef uint64_t start = page_up(end)
        if start < self.size:
            if fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         <long>start, <long>(self.size - start)) == 0:
                os.posix_fallocate(self.fd, start, self.size - start)
            else:
                memset(self.base + start, 0, self.size - start)
        if start > end:
            memset(self.base + end, 0, start - end)
        return 0

    cdef int _flush_range(self, uint64_t start, uint64_t stop) except -1:
        cdef int rc = 0
        cdef uint64_t first = start & ~(<uint64_t>PAGE - 1)
        if stop <= first:
            return 0
        with nogil:
            rc = msync(self.base + first, stop - first, MS_SYNC)
        if rc != 0:
            raise OSError(errno, f"msync of {self.path} failed: {os.strerror(errno)}")
        return 0

    def flush(self, uint64_t upto, uint64_t last_index):
        """Makes records below `upto` durable and moves the checkpoint there."""
        if upto <= self.synced_offset:
            return
        self._flush_range(self.synced_offset, upto)
        self.hdr.checkpoint_index = last_index
        seg_store_u64(&self.hdr.checkpoint_offset, upto)  # never past committed_end
        self.synced_offset = upto

    def flush_header(self):
        self._flush_range(0, SEG_HEADER_SIZE)

    cdef int drop_cache(self, uint64_t upto) except -1:
        """Takes the records from `cache_dropped` to `upto` (whole pages, synced) out of the
        page cache: first out of this mapping (a later read faults them back in from disk), then
        out of the cache itself. Pages that another process has mapped stay where they are."""
        cdef uint64_t start = self.cache_dropped & ~(<uint64_t>PAGE - 1)
        cdef uint64_t stop = upto & ~(<uint64_t>PAGE - 1)
        cdef int rc = 0
        if upto > self.synced_offset:
            raise ValueError(f"{self.path}: cannot drop unsynced records from the page cache")
        if upto == self.write_offset and seg_load_u64(&self.hdr.sealed_end):
            stop = (upto + PAGE - 1) & ~(<uint64_t>PAGE - 1)  # nothing is written here again
        if upto > self.cache_dropped:
            self.cache_dropped = upto
        if stop <= start:
            return 0
        with nogil:
            # The pages are clean (synced and never written again), so neither call loses data.
            rc = madvise(self.base + start, stop - start, MADV_DONTNEED)
            if rc == 0:
                rc = posix_fadvise(self.fd, <off_t>start, <off_t>(stop - start),
                                   POSIX_FADV_DONTNEED)
            else:
                rc = errno
        if rc != 0:
            raise OSError(rc, f"dropping {self.path} from the page cache failed: "
                          f"{os.strerror(rc)}")
        return 0

    def seal(self):
        """No more records go into this file: readers move on past sealed_end."""
        seg_store_u64(&self.hdr.sealed_end, self.write_offset)

    def set_first_index(self, uint64_t first_index):
        self.first_index = first_index
        self.hdr.first_index = first_index

    def end_and_last_index(self):
        """(end offset of the records, index of the last record or 0) by a walk from the last
        sparse-index entry; no CRC checks."""
        cdef uint64_t n = self.entry_count()
        cdef uint64_t off = self.data_offset
        cdef uint64_t last = 0, count = 0, limit
        cdef int64_t walked
        limit = self.committed()
        if n > 0 and self._entry_valid(n - 1, limit, False):
            off = self.entries[n - 1].offset
        walked = self._walk(off, limit, limit, limit, False, &last, &count)
        return (walked if walked >= 0 else -walked - 1), last

    def verify_all(self):
        """CRC-checks every record; returns the count, raises CorruptLogError on damage."""
        cdef uint64_t last = 0, count = 0
        cdef uint64_t sealed = seg_load_u64(&self.hdr.sealed_end)
        cdef uint64_t limit
        cdef int64_t walked
        self.check_header()
        limit = self.committed()
        with nogil:
            walked = self._walk(self.data_offset, limit, self.data_offset, limit, False, &last,
                                &count)
        if walked < 0:
            raise CorruptLogError(self.path, -walked - 1, "damaged record (bad length, CRC "
                                  "or index)")
        if sealed and <uint64_t>walked != sealed:
            raise CorruptLogError(self.path, walked, f"records end at {walked}, the file was "
                                  f"sealed at {sealed}")
        return count


def segment_file_create(str path, int fd, uint64_t file_size):
    """Maps a freshly preallocated file and writes its header; the SegmentFile owns `fd` from
    the call on, even if it raises. The first index is set when the file becomes the active one."""
    cdef SegmentFile f = SegmentFile.__new__(SegmentFile)
    cdef uint64_t capacity
    f.path = path
    f.fd = fd
    f._map(file_size, True)
    f.data_offset = layout_data_offset(file_size, &capacity)
    f.index_capacity = capacity
    f.entries = <seg_index_entry_t *>(f.base + SEG_HEADER_SIZE)
    memcpy(f.hdr.magic, SEG_MAGIC, 8)
    f.hdr.version = SEG_VERSION
    f.hdr.header_size = SEG_HEADER_SIZE
    f.hdr.file_size = file_size
    f.hdr.data_offset = f.data_offset
    f.hdr.index_capacity = capacity
    f.hdr.index_stride = SEG_INDEX_STRIDE
    f.hdr.created_ms = seg_now_ms()
    f.hdr.checkpoint_offset = f.data_offset
    f.hdr.committed_end = f.data_offset
    f.write_offset = f.data_offset
    f.synced_offset = f.data_offset
    f.cache_dropped = f.data_offset
    f.next_entry_at = f.data_offset
    return f


def segment_file_open(str path, int fd, bint writable, uint64_t first_index):
    """Maps an existing segment file after checking its header against its name (the first
    index); owns `fd` from the call on, even if it raises. A writer extends a file that was cut
    short back to the size its header states (the lost part reads as zeros, and recovery sees
    that the file was short); a reader refuses it."""
    cdef SegmentFile f = SegmentFile.__new__(SegmentFile)
    cdef stat st
    cdef seg_header_t hdr
    cdef uint64_t capacity, actual
    f.path = path
    f.fd = fd
    if fstat(fd, &st) != 0:
        raise OSError(errno, f"fstat of {path} failed: {os.strerror(errno)}")
    actual = <uint64_t>st.st_size
    if actual < SEG_HEADER_SIZE:
        raise CorruptLogError(path, 0, f"file is {actual} bytes, shorter than its header")
    raw = os.pread(fd, sizeof(seg_header_t), 0)
    if len(raw) != sizeof(seg_header_t):
        raise CorruptLogError(path, 0, "unreadable header")
    memcpy(&hdr, PyBytes_AS_STRING(raw), sizeof(seg_header_t))
    if memcmp(hdr.magic, SEG_MAGIC, 8) != 0:
        raise CorruptLogError(path, 0, "not a fluxcore segment file (bad magic)")
    if hdr.version != SEG_VERSION:
        raise CorruptLogError(path, 8, f"unsupported segment file version {hdr.version}")
    if hdr.first_index != first_index:
        raise CorruptLogError(path, 24, f"damaged header: first index {hdr.first_index}, the "
                              f"file name says {first_index}")
    if (hdr.file_size < MIN_SEGMENT_FILE_SIZE or hdr.file_size % PAGE
            or hdr.header_size != SEG_HEADER_SIZE or hdr.index_stride != SEG_INDEX_STRIDE
            or layout_data_offset(hdr.file_size, &capacity) != hdr.data_offset
            or hdr.index_capacity != capacity):
        raise CorruptLogError(path, 16, "inconsistent segment file header")
    if actual < hdr.file_size:
        if not writable:
            raise CorruptLogError(path, actual, f"file is {actual} bytes, its header says "
                                  f"{hdr.file_size}")
        os.posix_fallocate(fd, 0, hdr.file_size)
    f.found_size = actual
    f._map(hdr.file_size, writable)
    f.first_index = hdr.first_index
    f.data_offset = hdr.data_offset
    f.index_capacity = capacity
    f.entries = <seg_index_entry_t *>(f.base + SEG_HEADER_SIZE)
    f.write_offset = f.data_offset
    f.synced_offset = f.data_offset
    f.cache_dropped = f.data_offset
    f.next_entry_at = f.data_offset
    return f
