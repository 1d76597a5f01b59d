# Class layouts of the wire format that other compiled modules read; _proto.pyx implements
# them.
cimport cython
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


# A message id up to this many bytes (a uuid, hex or dashed, fits) is kept in the Message and
# decoded on first read; a longer one is decoded with the batch.
cdef enum:
    MESSAGE_ID_INLINE = 40


# Not tracked by the garbage collector (a consumer makes one per message): its fields are str,
# bytes, ints and the metadata dict of str to str that it decodes itself, none of which can lead
# back to it.
@cython.final
@cython.no_gc
cdef class Message:
    cdef readonly bytes data
    cdef readonly str type
    cdef str _message_id  # None until first read, if its bytes fit in _message_id_raw
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
    cdef uint8_t _message_id_len
    cdef char _message_id_raw[MESSAGE_ID_INLINE]
