# Class layouts of the wire format that other compiled modules read; _proto.pyx implements
# them.
cimport cython
from libc.stdint cimport int64_t, uint32_t, uint64_t


@cython.final
cdef class Message:
    cdef readonly bytes data
    cdef readonly str type
    cdef readonly str message_id
    cdef readonly str source
    cdef readonly str target
    cdef readonly str format
    cdef readonly uint32_t revision
    cdef readonly int64_t timestamp
    cdef readonly int64_t request_id
    cdef readonly uint64_t index
    cdef readonly int segment
    cdef readonly int flags
    cdef bytes _metadata_raw
    cdef object _metadata
