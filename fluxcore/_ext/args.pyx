# Checking the arguments of the public calls: integers must be integers (an int, a numpy
# integer, anything with __index__; never a float, a str or a bool) and in range; the errors
# name the argument.

cdef object int_value(object value, str name):
    """`value` as a Python int, or TypeError naming `name`."""
    if PyLong_CheckExact(value):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


cdef int u64_arg(object value, str name, uint64_t *out) except -1:
    """An integer in 0..2**64-1: TypeError if not an integer, ValueError if out of range."""
    value = int_value(value, name)
    if value < 0 or value > 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"{name} must be in 0..2**64-1, not {value}")
    out[0] = <uint64_t>value
    return 0


cdef int ssize_arg(object value, str name, Py_ssize_t lo, Py_ssize_t *out) except -1:
    """An integer in lo..PY_SSIZE_T_MAX: TypeError if not an integer, ValueError if not."""
    value = int_value(value, name)
    if value < lo or value > PY_SSIZE_T_MAX:
        raise ValueError(f"{name} must be in {lo}..{PY_SSIZE_T_MAX}, not {value}")
    out[0] = <Py_ssize_t>value
    return 0


cdef object key_sequence(object keys, str name):
    """A sequence of keys; a single str or bytes (which would be split into characters) is
    refused."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be a sequence of str or bytes keys, not one "
                        f"{type(keys).__name__}")
    return PySequence_Fast(keys, "keys must be a sequence of str or bytes keys")


cdef object segment_array(object segments, Py_ssize_t n):
    """Segments of n records as a contiguous uint8 array: integers in 0..127."""
    cdef object arr
    if isinstance(segments, (str, bytes, bytearray)):
        raise TypeError(f"segments must be a sequence of ints, not {type(segments).__name__}")
    cdef const unsigned char[::1] raw
    cdef Py_ssize_t i
    arr = np.asarray(segments)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"got {arr.size} segments for {n} payloads")
    if arr.dtype == np.uint8:
        # The server's case (append_parse): checked in C, not by two numpy reductions.
        arr = np.ascontiguousarray(arr)
        raw = arr
        for i in range(n):
            if raw[i] >= SEGMENTS:
                raise ValueError("segments must be integers in 0..127")
        return arr
    if n and arr.dtype.kind not in "iu":
        raise TypeError(f"segments must be integers, not {arr.dtype}")
    if n and (arr.min() < 0 or arr.max() >= SEGMENTS):
        raise ValueError("segments must be integers in 0..127")
    return np.ascontiguousarray(arr, dtype=np.uint8)


cdef int get_contiguous(object obj, Py_buffer *view, str name) except -1:
    """A read buffer of a bytes-like object; ValueError naming `name` if it is not contiguous
    (a strided memoryview or array)."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_ANY_CONTIGUOUS)
    except (BufferError, ValueError) as exc:  # numpy says ValueError
        raise ValueError(f"{name} must be a contiguous buffer ({exc})") from None
    return 0
