# Routing (XXH64 of the key, modulo 128 segments) and the checksum, exposed for callers and tests.


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL


cdef inline int key_bytes(object key, const char **ptr, Py_ssize_t *size) except -1:
    """Points at the UTF-8 bytes of a str key (cached by CPython) or at a bytes key."""
    if PyBytes_CheckExact(key):
        ptr[0] = PyBytes_AS_STRING(key)
        size[0] = PyBytes_GET_SIZE(key)
    elif PyUnicode_Check(key):
        ptr[0] = PyUnicode_AsUTF8AndSize(key, size)
    else:
        raise TypeError(f"a routing key must be str or bytes, not {type(key).__name__}")
    return 0


cdef inline uint8_t route_segment(const char *ptr, Py_ssize_t size) noexcept nogil:
    return <uint8_t>(xxh64(ptr, <size_t>size, 0) % SEGMENTS)


cdef inline uint8_t route_index(uint64_t index) noexcept nogil:
    # Records without a key or segment are spread by their index.
    return <uint8_t>(xxh64(&index, 8, 0) % SEGMENTS)


cdef int route_keys(object keys, Py_ssize_t n, uint8_t *out) except -1:
    cdef object seq = key_sequence(keys, "keys")
    cdef Py_ssize_t i
    cdef const char *ptr
    cdef Py_ssize_t size
    if PySequence_Fast_GET_SIZE(seq) != n:
        raise ValueError(f"got {PySequence_Fast_GET_SIZE(seq)} keys for {n} payloads")
    for i in range(n):
        key_bytes(<object>PySequence_Fast_GET_ITEM(seq, i), &ptr, &size)
        out[i] = route_segment(ptr, size)
    return 0


def xxh64_digest(data, uint64_t seed=0):
    """XXH64 of a bytes-like object, as an unsigned int."""
    cdef Py_buffer view
    get_contiguous(data, &view, "data")
    try:
        return xxh64(view.buf, <size_t>view.len, seed)
    finally:
        PyBuffer_Release(&view)


def crc32c(data, uint32_t value=0):
    """CRC32C of a bytes-like object, continuing from `value`."""
    cdef Py_buffer view
    cdef uint32_t out
    get_contiguous(data, &view, "data")
    try:
        with nogil:
            out = crc32c_value(value, view.buf, <size_t>view.len)
        return out
    finally:
        PyBuffer_Release(&view)


def crc32c_hardware():
    """True when CRC32C runs on the CPU's crc32 instruction."""
    return crc_uses_hardware() == 1


def segment_of(key):
    """The segment (0-127) of a routing key: xxh64(utf8(key), seed=0) % 128."""
    cdef const char *ptr
    cdef Py_ssize_t size
    key_bytes(key, &ptr, &size)
    return route_segment(ptr, size)


def segments_of(keys):
    """Segments of many keys in one call, as a numpy uint8 array."""
    cdef object seq = key_sequence(keys, "keys")
    cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, [n], cnp.NPY_UINT8, 0)
    route_keys(seq, n, <uint8_t *>cnp.PyArray_DATA(out))
    return out
