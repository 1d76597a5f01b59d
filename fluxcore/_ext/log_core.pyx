# LogCore: the hot paths of a log (append, append a batch, read a batch) over its segment
# files. Opening, recovery, rolling, retention and the sync thread are in fluxcore/log.py,
# which subclasses this; the rare operations it calls back into are `_roll`, `_map` and
# `_refresh`.


cdef class LogCore:

    def __cinit__(self, *args, **kwargs):
        pthread_mutex_init(&self._append_mu, NULL)
        pthread_mutex_init(&self._sync_mu, NULL)
        self._files = []
        self._starts = []
        self._unsynced = []
        self._cached = []
        self._active = None
        self.closed = False

    def __dealloc__(self):
        free(<void *>self._ptrs)
        free(self._lens)
        free(self._segs)
        free(self._stage)
        pthread_mutex_destroy(&self._append_mu)
        pthread_mutex_destroy(&self._sync_mu)

    def _configure(self, bint readonly, uint64_t segment_file_size, int fsync_mode,
                   uint64_t cache_window):
        if segment_file_size < MIN_SEGMENT_FILE_SIZE or segment_file_size % PAGE:
            raise ValueError("segment_file_size must be a multiple of 4096 and at least 1 MiB")
        self.readonly = readonly
        self.segment_file_size = segment_file_size
        self._fsync_mode = fsync_mode
        self._cache_window = cache_window

    def _set_last_index(self, uint64_t last_index):
        self._last_index = last_index
        self.durable_index = last_index

    def _mark_closed(self):
        """From here on every call raises LogClosedError; calls in flight finish or raise it."""
        self.closed = True
        self._cur_valid = False

    def _quiesce(self):
        """Waits for the append in flight, if any (the ones after it see `closed`)."""
        self._lock_append()
        pthread_mutex_unlock(&self._append_mu)

    @property
    def last_index(self):
        """Index of the newest record (0 when the log is empty)."""
        return self._last_index

    # -- appending ---------------------------------------------------------------------------

    cdef int _check_writable(self) except -1:
        if self.closed:
            raise LogClosedError("the log is closed")
        if self.readonly:
            raise LogError("the log was opened readonly; only a writer appends")
        return 0

    cdef int _lock_append(self) except -1:
        # Uncontended: no GIL round trip. Contended: wait without the GIL, so that the holder,
        # which may be waiting for the GIL itself, can finish.
        if pthread_mutex_trylock(&self._append_mu) != 0:
            with nogil:
                pthread_mutex_lock(&self._append_mu)
        return 0

    cdef int _lock_append_open(self) except -1:
        """The append lock, for an append: LogClosedError if close() began meanwhile (close
        takes this lock once after marking the log closed, so no append runs past that)."""
        self._lock_append()
        if self.closed:
            pthread_mutex_unlock(&self._append_mu)
            raise LogClosedError("the log is closed")
        return 0

    cdef bint _mark_dirty(self) noexcept:
        """Called under the append lock after records were appended: True if the log just
        became due for a sync under the `interval` policy (the caller then hands it to the
        sync scheduler, once per sync, not once per append)."""
        if self._fsync_mode != FSYNC_INTERVAL or self.sync_pending:
            return False
        self.sync_pending = True
        return True

    cdef int _grow_scratch(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef void *p
        if n <= self._scratch_cap:
            return 0
        cap = max(n, 2 * self._scratch_cap, 1024)
        p = realloc(<void *>self._ptrs, cap * sizeof(char *))
        if p == NULL:
            raise MemoryError()
        self._ptrs = <const char **>p
        p = realloc(self._lens, cap * sizeof(Py_ssize_t))
        if p == NULL:
            raise MemoryError()
        self._lens = <Py_ssize_t *>p
        p = realloc(self._segs, cap * sizeof(uint8_t))
        if p == NULL:
            raise MemoryError()
        self._segs = <uint8_t *>p
        self._scratch_cap = cap
        return 0

    cdef uint64_t _max_payload(self):
        cdef uint64_t capacity
        return self.segment_file_size - layout_data_offset(
            self.segment_file_size, &capacity) - REC_HEADER_SIZE

    def append(self, payload, *, key=None, segment=None, index=None):
        """Appends one record; returns its index."""
        cdef Py_buffer view
        cdef bint have_view = False
        cdef const char *ptr
        cdef Py_ssize_t size
        cdef uint8_t seg = 0
        cdef bint seg_from_index = False
        cdef uint64_t idx, now
        cdef SegmentFile f
        cdef const char *key_ptr
        cdef Py_ssize_t key_size
        cdef uint64_t preset = 0
        cdef bint notify = False
        self._check_writable()
        if index is not None:
            u64_arg(index, "index", &preset)
        if segment is not None:
            segment = int_value(segment, "segment")
        if PyBytes_CheckExact(payload):
            ptr = PyBytes_AS_STRING(payload)
            size = PyBytes_GET_SIZE(payload)
        elif PyUnicode_Check(payload) or not PyObject_CheckBuffer(payload):
            raise TypeError(f"a payload must be bytes-like, not {type(payload).__name__}")
        else:
            get_contiguous(payload, &view, "payload")
            have_view = True
            ptr = <const char *>view.buf
            size = view.len
        try:
            if <uint64_t>size > self._max_payload():
                raise RecordTooLargeError(
                    f"a {size}-byte payload does not fit in a segment file of "
                    f"{self.segment_file_size} bytes (at most {self._max_payload()})")
            if key is not None:
                if segment is not None:
                    raise ValueError("give a key or a segment, not both")
                key_bytes(key, &key_ptr, &key_size)
                seg = route_segment(key_ptr, key_size)
            elif segment is not None:
                if not 0 <= segment < SEGMENTS:
                    raise ValueError(f"segment {segment} is outside 0..127")
                seg = <uint8_t>segment
            else:
                seg_from_index = True
            self._lock_append_open()
            try:
                if index is not None:
                    if preset <= self._last_index:
                        raise ValueError(f"preset index {index} is not greater than the last "
                                         f"index {self._last_index}")
                    idx = preset
                else:
                    now = seg_now_ms() << 16
                    idx = now if now > self._last_index else self._last_index + 1
                if seg_from_index:
                    seg = route_index(idx)
                f = self._active
                if f is None or f.write_offset + REC_HEADER_SIZE + <uint64_t>size > f.size:
                    self._roll(idx, size)
                    f = self._active
                f.append_records(&ptr, &size, &seg, idx, 0, 1)
                self._last_index = idx
                self.appended += 1
                notify = self._mark_dirty()
            finally:
                pthread_mutex_unlock(&self._append_mu)
        finally:
            if have_view:
                PyBuffer_Release(&view)
        if self._fsync_mode == FSYNC_ALWAYS:
            self._sync_to(idx)
        elif notify:
            self._schedule_sync()
        return idx

    def append_batch(self, payloads, *, keys=None, segments=None):
        """Appends many records in one call; returns their indexes (numpy uint64)."""
        cdef object seq = PySequence_Fast(payloads, "payloads must be a sequence of bytes")
        cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq)
        cdef Py_ssize_t i
        cdef object item
        cdef list converted = None
        cdef object out
        cdef Py_buffer view
        cdef uint64_t before
        cdef bint notify = False
        self._check_writable()
        self._lock_append_open()  # the scratch arrays are the writer's: gather under the lock
        before = self.appended
        try:
            self._grow_scratch(n)
            for i in range(n):
                item = <object>PySequence_Fast_GET_ITEM(seq, i)
                if not PyBytes_CheckExact(item):
                    if PyUnicode_Check(item) or not PyObject_CheckBuffer(item):
                        raise TypeError(
                            f"payload {i} must be bytes-like, not {type(item).__name__}")
                    get_contiguous(item, &view, f"payload {i}")
                    PyBuffer_Release(&view)
                    item = bytes(item)  # rare: bytearray or memoryview items are copied once
                    if converted is None:
                        converted = []
                    converted.append(item)
                self._ptrs[i] = PyBytes_AS_STRING(item)
                self._lens[i] = PyBytes_GET_SIZE(item)
            out = self._append_gathered(n, keys, segments)
        finally:
            # Part of a batch may be stored when it fails: that part is due a sync too.
            notify = self.appended != before and self._mark_dirty()
            pthread_mutex_unlock(&self._append_mu)
            if notify:
                self._schedule_sync()
        if self._fsync_mode == FSYNC_ALWAYS and n:
            self._sync_to(self._last_index)
        return out

    def append_buffer(self, buffer, offsets, *, keys=None, segments=None, first_index=None):
        """Appends the records buffer[offsets[i]:offsets[i+1]] in one call; returns their
        indexes (numpy uint64): first_index, first_index + 1, ... when it is given (it must
        be above the last index), else from the clock."""
        cdef Py_buffer view
        cdef cnp.ndarray offs
        cdef const int64_t *o
        cdef Py_ssize_t n, i
        cdef object out
        cdef uint64_t preset = 0
        cdef uint64_t before
        cdef bint notify = False
        self._check_writable()
        if first_index is not None:
            if type(first_index) is not int:
                raise TypeError(f"first_index must be an int, not {type(first_index).__name__}")
            if not 0 < first_index < 1 << 63:
                raise ValueError(f"first_index {first_index} is outside 1..2**63-1")
            preset = first_index
        if PyUnicode_Check(buffer) or not PyObject_CheckBuffer(buffer):
            raise TypeError(f"buffer must be bytes-like, not {type(buffer).__name__}")
        if isinstance(offsets, (str, bytes, bytearray)):
            raise TypeError(f"offsets must be a sequence of ints, not {type(offsets).__name__}")
        raw = np.asarray(offsets)
        if raw.size and raw.dtype.kind not in "iu":
            raise TypeError(f"offsets must be integers, not {raw.dtype}")
        if raw.dtype.kind == "u" and raw.size and raw.max() > 0x7FFFFFFFFFFFFFFF:
            raise ValueError("offsets must ascend within the buffer")
        offs = np.ascontiguousarray(raw, dtype=np.int64)
        if offs.ndim != 1 or offs.shape[0] < 1:
            raise ValueError("offsets must be a 1-d array of n+1 boundaries")
        n = offs.shape[0] - 1
        get_contiguous(buffer, &view, "buffer")
        try:
            o = <const int64_t *>cnp.PyArray_DATA(offs)
            if n and (o[0] < 0 or o[n] > view.len):
                raise ValueError("offsets must ascend within the buffer")
            for i in range(n):
                if o[i + 1] < o[i]:
                    raise ValueError("offsets must ascend within the buffer")
            self._lock_append_open()
            before = self.appended
            try:
                self._grow_scratch(n)
                for i in range(n):
                    self._ptrs[i] = <const char *>view.buf + o[i]
                    self._lens[i] = o[i + 1] - o[i]
                out = self._append_gathered(n, keys, segments, preset)
            finally:
                notify = self.appended != before and self._mark_dirty()
                pthread_mutex_unlock(&self._append_mu)
                if notify:
                    self._schedule_sync()
        finally:
            PyBuffer_Release(&view)
        if self._fsync_mode == FSYNC_ALWAYS and n:
            self._sync_to(self._last_index)
        return out

    cdef object _append_gathered(self, Py_ssize_t n, object keys, object segments,
                                 uint64_t first_index=0):
        cdef cnp.ndarray segs_arr
        cdef cnp.ndarray out
        cdef uint64_t *out_idx
        cdef uint64_t base, now, off, length, limit, max_payload
        cdef Py_ssize_t i, pos, written
        cdef int error = 0
        cdef Py_ssize_t longest = 0
        cdef bint seg_from_index = False
        cdef SegmentFile f
        cdef list sizes = None
        cdef uint64_t plan_size, capacity
        if first_index and first_index <= self._last_index:
            raise ValueError(f"preset index {first_index} is not greater than the last "
                             f"index {self._last_index}")
        max_payload = self._max_payload()
        for i in range(n):
            if self._lens[i] > longest:
                longest = self._lens[i]
        if <uint64_t>longest > max_payload:
            raise RecordTooLargeError(
                f"a {longest}-byte payload does not fit in a segment file of "
                f"{self.segment_file_size} bytes (at most {max_payload}); nothing was written")
        if keys is not None:
            if segments is not None:
                raise ValueError("give keys or segments, not both")
            route_keys(keys, n, self._segs)
        elif segments is not None:
            segs_arr = segment_array(segments, n)
            if n:
                memcpy(self._segs, cnp.PyArray_DATA(segs_arr), n)
        else:
            seg_from_index = True
        out = cnp.PyArray_EMPTY(1, [n], cnp.NPY_UINT64, 0)
        if n == 0:
            return out
        out_idx = <uint64_t *>cnp.PyArray_DATA(out)
        # The caller holds the append lock.
        # Reserve every segment file this batch will roll into before writing any record,
        # so that a full disk fails the batch whole instead of half-written. Files grow as
        # the log does (`_next_file_size`): the plan makes the same choices as the rolls.
        f = self._active
        off = f.write_offset if f is not None else 0
        limit = f.size if f is not None else 0
        plan_size = limit
        for i in range(n):
            length = REC_HEADER_SIZE + <uint64_t>self._lens[i]
            if off + length > limit:
                if sizes is None:
                    sizes = []
                    if f is None:
                        plan_size = self._last_file_size
                plan_size = self._next_file_size(plan_size, self._lens[i])
                sizes.append(plan_size)
                off = layout_data_offset(plan_size, &capacity)
                limit = plan_size
            off += rec_stride(length)
        if sizes is not None:
            self._reserve(sizes)
        if first_index:
            base = first_index
        else:
            now = seg_now_ms() << 16
            base = now if now > self._last_index else self._last_index + 1
        for i in range(n):
            out_idx[i] = base + <uint64_t>i
        if seg_from_index:
            for i in range(n):
                self._segs[i] = route_index(base + <uint64_t>i)
        if self._stage == NULL:
            self._stage = <char *>malloc(STAGE_SIZE)
            if self._stage == NULL:
                raise MemoryError()
        pos = 0
        while pos < n:
            f = self._active
            if f is None or f.write_offset + REC_HEADER_SIZE + <uint64_t>self._lens[pos] > f.size:
                self._roll(base + <uint64_t>pos, self._lens[pos])
                f = self._active
            with nogil:
                if n - pos == 1 and self._lens[pos] <= MAPPED_RECORD_MAX:
                    # One small record (a request, a result): through the mapping, as
                    # append() does, cheaper than the system call of a staged write.
                    written = f.append_records(self._ptrs, self._lens, self._segs, base, pos, n)
                else:
                    written = f.write_records(self._stage, STAGE_SIZE, self._ptrs, self._lens,
                                              self._segs, base, pos, n, &error)
            pos += written
            if written:
                self._last_index = base + <uint64_t>pos - 1
                self.appended += <uint64_t>written
            if error:
                stored = (f"; the first {pos} of the {n} records, written to earlier files, "
                          f"are stored" if pos else "; nothing of it was stored")
                if error in (ENOSPC, EFBIG, EDQUOT):
                    raise LogFullError(error, f"{f.path}: no space to write a batch "
                                       f"({os.strerror(error)}){stored}")
                raise OSError(error, f"writing {f.path} failed ({os.strerror(error)}){stored}")
        return out

    # -- syncing -----------------------------------------------------------------------------

    def _sync_to(self, uint64_t target):
        """Makes every record up to `target` (0: everything appended so far) durable. One
        sync serves every caller waiting for it (group commit); returns the durable index."""
        cdef list files
        cdef SegmentFile f, active
        cdef uint64_t end = 0, last
        with nogil:
            pthread_mutex_lock(&self._sync_mu)
        try:
            if target and self.durable_index >= target:
                return self.durable_index
            self._lock_append()
            try:
                files = self._unsynced
                self._unsynced = []
                self.sync_pending = False  # an append after this snapshot is due again
                active = self._active
                if active is not None:
                    end = active.write_offset
                last = self._last_index
            finally:
                pthread_mutex_unlock(&self._append_mu)
            for f in files:
                f.flush(f.write_offset, f.last_index)
                f.flush_header()
            if active is not None:
                active.flush(end, last)
            if last > self.durable_index:
                self.durable_index = last
            if self._cache_window:
                self._trim_page_cache(files, active)
            return self.durable_index
        finally:
            pthread_mutex_unlock(&self._sync_mu)

    cdef int _trim_page_cache(self, list synced, SegmentFile active) except -1:
        """Drops from the page cache the synced records that lie more than `_cache_window`
        bytes behind the newest synced one, oldest file first. Called with the sync lock held.

        A log that only grows would otherwise fill the page cache with records nobody reads
        again, pushing out what other programs cache. On a virtual machine it is also slow:
        each page taken from memory the guest has not touched yet costs a fault in the host,
        and a writer that recycles its own pages keeps several times the append rate there."""
        cdef list plan = []
        cdef SegmentFile f
        cdef uint64_t cached = 0, excess, upto
        self._lock_append()  # `_cached` is shared with retention, which runs under this lock
        try:
            for f in synced:
                if f not in self._cached:
                    self._cached.append(f)
            if active is not None and active not in self._cached:
                self._cached.append(active)
            for f in self._cached:
                cached += f.synced_offset - f.cache_dropped
            # Dropping waits until a few pages are due: one pair of calls per sync, not per
            # record, when every append is synced on its own (the `always` policy).
            excess = cached - self._cache_window if cached > self._cache_window + TRIM_STEP else 0
            while excess and self._cached:
                f = self._cached[0]
                upto = f.synced_offset
                if upto - f.cache_dropped > excess:
                    upto = f.cache_dropped + excess
                excess -= upto - f.cache_dropped
                plan.append((f, upto))
                if f is self._active or upto < f.write_offset:
                    break  # more of this file is still to be synced or dropped
                self._cached.pop(0)
        finally:
            pthread_mutex_unlock(&self._append_mu)
        for f, upto in plan:  # outside the append lock: the writer goes on meanwhile
            f.drop_cache(upto)
        return 0

    # -- reading -----------------------------------------------------------------------------

    cdef SegmentFile _file_at(self, Py_ssize_t pos):
        # close() empties the lists only after setting `closed`, and both happen under the GIL.
        if self.closed:
            raise LogClosedError("the log is closed")
        cdef object f = self._files[pos]
        if f is None:
            f = self._map(pos)
        return <SegmentFile>f

    cdef Py_ssize_t _locate(self, uint64_t after, uint64_t *offset, bint verify) except -2:
        """Position in _files and offset of the first record with index > after; -1 if the
        log has no files."""
        cdef Py_ssize_t pos
        cdef SegmentFile f
        if self._cur_valid and after == self._cur_after:
            pos = bisect.bisect_left(self._starts, self._cur_start)
            if pos < len(self._starts) and self._starts[pos] == self._cur_start:
                offset[0] = self._cur_offset
                return pos
        if not self._starts and self.readonly:
            self._refresh()
        if not self._starts:
            return -1
        pos = bisect.bisect_right(self._starts, after) - 1
        if pos < 0:
            pos = 0
        f = self._file_at(pos)
        if f is None:  # removed by retention under a reader: start again from the list
            self._refresh()
            return self._locate(after, offset, verify)
        f.check_header()
        offset[0] = f.seek(after, verify)
        return pos

    def read(self, after=0, *, max_count=10000, max_bytes=16 * 1024 * 1024, segments=None,
             bint verify=True):
        """Reads records with index > after, from one segment file, into one Batch. With
        `verify` (the default) the CRC of every record passed over is checked, and a damaged
        one raises CorruptLogError instead of being handed out."""
        cdef int seg_lo = 0, seg_hi = SEGMENTS
        cdef uint64_t after_, max_bytes_
        cdef Py_ssize_t max_count_
        if self.closed:
            raise LogClosedError("the log is closed")
        u64_arg(after, "after", &after_)
        ssize_arg(max_count, "max_count", 1, &max_count_)
        u64_arg(max_bytes, "max_bytes", &max_bytes_)
        if segments is not None:
            if isinstance(segments, (str, bytes)) or len(segments) != 2:
                raise ValueError("segments must be a range (lo, hi) with 0 <= lo <= hi <= 128")
            lo, hi = int_value(segments[0], "segments"), int_value(segments[1], "segments")
            if not 0 <= lo <= hi <= SEGMENTS:
                raise ValueError("segments must be a range (lo, hi) with 0 <= lo <= hi <= 128")
            seg_lo, seg_hi = lo, hi
        return self._read(after_, max_count_, max_bytes_, seg_lo, seg_hi, verify)

    cdef Batch _read(self, uint64_t after, Py_ssize_t max_count, uint64_t max_bytes,
                     int seg_lo, int seg_hi, bint verify):
        cdef uint64_t offset = 0, last_scanned = 0
        cdef Py_ssize_t pos, count, capacity
        cdef SegmentFile f
        cdef Batch b
        cdef int64_t *out_off
        cdef int64_t *out_len
        cdef uint64_t *out_idx
        cdef uint8_t *out_seg
        pos = self._locate(after, &offset, verify)
        if pos < 0:
            b = batch_new(None, 0)
            batch_trim(b, 0, after)
            return b
        while True:
            f = self._file_at(pos)
            if f is None:
                self._refresh()
                pos = self._locate(after, &offset, verify)
                continue
            f.check_header()
            capacity = min(<uint64_t>max_count, (f.size - offset) // REC_HEADER_SIZE + 1)
            b = batch_new(f, capacity)
            out_off = <int64_t *>b.off_ptr
            out_len = <int64_t *>b.len_ptr
            out_idx = <uint64_t *>b.idx_ptr
            out_seg = <uint8_t *>cnp.PyArray_DATA(b.segments)
            with nogil:
                count = f.read_records(&offset, capacity, max_bytes, seg_lo, seg_hi, verify,
                                       out_off, out_len, out_idx, out_seg, &last_scanned)
            if count < 0:
                raise CorruptLogError(f.path, offset, "damaged record (bad length or CRC)"
                                      if verify else "damaged record (bad length)")
            if last_scanned:
                after = last_scanned
            if count == 0 and f.is_sealed_at(offset):
                if pos + 1 >= len(self._starts) and self.readonly:
                    self._refresh()
                    pos = bisect.bisect_left(self._starts, f.first_index)
                if pos + 1 < len(self._starts):
                    pos += 1
                    f = self._file_at(pos)
                    if f is None:
                        self._refresh()
                        pos = self._locate(after, &offset, verify)
                        if pos < 0:
                            break
                    else:
                        offset = f.data_offset
                    continue
            break
        batch_trim(b, count, after)
        self._cur_after = after
        self._cur_start = f.first_index
        self._cur_offset = offset
        self._cur_valid = True
        return b

    def _has_after(self, uint64_t after):
        """True if a record with index > after exists (cheap: no batch is built)."""
        cdef uint64_t offset = 0
        cdef Py_ssize_t pos
        cdef SegmentFile f
        if not self.readonly:
            return self._last_index > after
        pos = self._locate(after, &offset, False)
        while pos >= 0:
            f = self._file_at(pos)
            if f is None:
                return False
            if rec_check(f.base, offset, f.committed(), False) != 0:
                return True
            if not f.is_sealed_at(offset):
                return False
            if pos + 1 >= len(self._starts):
                self._refresh()
                pos = bisect.bisect_left(self._starts, f.first_index)
                if pos + 1 >= len(self._starts):
                    return False
            pos += 1
            f = self._file_at(pos)
            if f is None:
                return False
            offset = f.data_offset
        return False
