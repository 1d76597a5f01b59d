# Batch: the result of one read, over one mapped segment file. Holding a Batch (or a view of
# its data) keeps that file mapped, even after retention has removed it from the directory.


@cython.final
cdef class Batch:

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"<Batch of {self.count} records, next_after={self.next_after}>"

    @property
    def data(self):
        """A read-only memoryview of the whole mapped segment file; offsets index into it."""
        if self.file is None:
            return memoryview(b"")
        return memoryview(self.file)

    def __getitem__(self, Py_ssize_t i):
        if i < 0:
            i += self.count
        if i < 0 or i >= self.count:
            raise IndexError("batch index out of range")
        return (self.idx_ptr[i],
                PyBytes_FromStringAndSize(self.base + self.off_ptr[i], self.len_ptr[i]))

    def payloads(self):
        """Every payload as bytes, in one call."""
        cdef list out = PyList_New(self.count)
        cdef Py_ssize_t i
        cdef object payload
        for i in range(self.count):
            payload = PyBytes_FromStringAndSize(self.base + self.off_ptr[i], self.len_ptr[i])
            Py_INCREF(payload)
            PyList_SET_ITEM(out, i, payload)
        return out

    def __iter__(self):
        cdef BatchIterator it = BatchIterator.__new__(BatchIterator)
        it.batch = self
        it.pos = 0
        return it


@cython.final
cdef class BatchIterator:
    """Yields (index, payload bytes) pairs."""
    cdef Batch batch
    cdef Py_ssize_t pos

    def __iter__(self):
        return self

    def __next__(self):
        cdef Batch b = self.batch
        cdef Py_ssize_t i = self.pos
        cdef tuple pair
        cdef object index, payload
        if i >= b.count:
            raise StopIteration
        self.pos = i + 1
        index = b.idx_ptr[i]
        payload = PyBytes_FromStringAndSize(b.base + b.off_ptr[i], b.len_ptr[i])
        pair = PyTuple_New(2)
        Py_INCREF(index)
        PyTuple_SET_ITEM(pair, 0, index)
        Py_INCREF(payload)
        PyTuple_SET_ITEM(pair, 1, payload)
        return pair


cdef Batch batch_new(SegmentFile f, Py_ssize_t capacity):
    """An empty batch with room for `capacity` records (filled in place by read)."""
    cdef Batch b = Batch.__new__(Batch)
    b.file = f
    b.base = f.base if f is not None else NULL
    b.indexes = cnp.PyArray_EMPTY(1, [capacity], cnp.NPY_UINT64, 0)
    b.segments = cnp.PyArray_EMPTY(1, [capacity], cnp.NPY_UINT8, 0)
    b.offsets = cnp.PyArray_EMPTY(1, [capacity], cnp.NPY_INT64, 0)
    b.lengths = cnp.PyArray_EMPTY(1, [capacity], cnp.NPY_INT64, 0)
    b.idx_ptr = <const uint64_t *>cnp.PyArray_DATA(b.indexes)
    b.off_ptr = <const int64_t *>cnp.PyArray_DATA(b.offsets)
    b.len_ptr = <const int64_t *>cnp.PyArray_DATA(b.lengths)
    b.count = 0
    return b


cdef int batch_trim(Batch b, Py_ssize_t count, uint64_t next_after) except -1:
    b.count = count
    b.next_after = next_after
    if count < len(b.indexes):
        b.indexes = b.indexes[:count]
        b.segments = b.segments[:count]
        b.offsets = b.offsets[:count]
        b.lengths = b.lengths[:count]
    return 0
