# cython: language_level=3
"""The microclient's per-message work in C (fluxcore/app/ is the thin Python over it): the
dispatch loop of plain typed handlers (decode the payload, call the handler, time it), and a
batch's handler metrics kept in preallocated arrays and encoded as one msgpack map per batch
(docs/protocol.md, "Handler metrics")."""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int8_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fluxcore._ext._proto cimport Message


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL


# What stopped dispatch_plain (see there).
DISPATCH_DONE = 0
DISPATCH_GENERAL = 1
DISPATCH_COMMIT = 2


cdef inline int64_t clock_ns() noexcept nogil:
    # CLOCK_MONOTONIC, as time.perf_counter_ns on Linux: a vDSO call, no system call.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


@cython.final
cdef class Handling:
    """The message being handled in this context, and the aggregates loaded meanwhile (they
    are committed when the handler returns)."""
    cdef public object message
    cdef public object aggregates  # a list, or None while none was loaded

    def __init__(self, message):
        self.message = message
        self.aggregates = None

    def loaded(self, root):
        if self.aggregates is None:
            self.aggregates = []
        self.aggregates.append(root)


@cython.final
cdef class HandlerTimings:
    """The handled messages of one batch: per message its (handler, payload type) code, its
    index, its duration and whether it failed. A duration is the time since the previous
    message was done (or since the batch began): one clock reading per message."""
    cdef uint32_t *codes
    cdef int64_t *indexes
    cdef int64_t *durations_us
    cdef uint8_t *failed
    cdef Py_ssize_t count
    cdef Py_ssize_t capacity
    cdef int64_t started_ns
    cdef int64_t last_ns

    def __cinit__(self, Py_ssize_t capacity=1024):
        self.capacity = 0
        self.count = 0
        self._grow(capacity if capacity > 16 else 16)
        self.started_ns = self.last_ns = clock_ns()

    def __dealloc__(self):
        PyMem_Free(self.codes)
        PyMem_Free(self.indexes)
        PyMem_Free(self.durations_us)
        PyMem_Free(self.failed)

    cdef int _grow(self, Py_ssize_t capacity) except -1:
        cdef void *p
        p = PyMem_Realloc(self.codes, capacity * sizeof(uint32_t))
        if p == NULL:
            raise MemoryError()
        self.codes = <uint32_t *>p
        p = PyMem_Realloc(self.indexes, capacity * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self.indexes = <int64_t *>p
        p = PyMem_Realloc(self.durations_us, capacity * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self.durations_us = <int64_t *>p
        p = PyMem_Realloc(self.failed, capacity * sizeof(uint8_t))
        if p == NULL:
            raise MemoryError()
        self.failed = <uint8_t *>p
        self.capacity = capacity
        return 0

    cdef inline int record(self, uint32_t code, int64_t index, bint failed,
                           int64_t now) except -1:
        cdef Py_ssize_t i = self.count
        if i == self.capacity:
            self._grow(2 * self.capacity)
        self.codes[i] = code
        self.indexes[i] = index
        self.durations_us[i] = (now - self.last_ns) // 1000
        self.failed[i] = failed
        self.last_ns = now
        self.count = i + 1
        return 0

    def add(self, uint32_t code, int64_t index, bint failed):
        """Records a message handled just now."""
        self.record(code, index, failed, clock_ns())

    def __len__(self):
        return self.count

    def elapsed_us(self):
        """Microseconds since the batch began."""
        return (clock_ns() - self.started_ns) // 1000

    def columns(self):
        """(codes, indexes, durations in µs, failed) as lists: for tests and tools."""
        cdef Py_ssize_t i
        return ([self.codes[i] for i in range(self.count)],
                [self.indexes[i] for i in range(self.count)],
                [self.durations_us[i] for i in range(self.count)],
                [self.failed[i] != 0 for i in range(self.count)])

    def encode(self, str consumer, str client, str message_type, int64_t timestamp,
               list handlers, list payload_types):
        """The HandleMessage metric of these messages: a msgpack map, written as msgspec
        writes it from a dict (the smallest encoding of each value)."""
        cdef Writer out = Writer(64 + 26 * self.count)
        cdef Py_ssize_t i
        out.head(0x80, 15, 0xde, 0xdf, 10)
        out.text("consumer")
        out.text(consumer)
        out.text("client")
        out.text(client)
        out.text("message_type")
        out.text(message_type)
        out.text("timestamp")
        out.integer(timestamp)
        out.text("handlers")
        out.texts(handlers)
        out.text("payload_types")
        out.texts(payload_types)
        out.text("handler")
        out.array(self.count)
        out.room(9 * self.count)
        for i in range(self.count):
            out.integer_unchecked(self.codes[i])
        out.text("index")
        out.array(self.count)
        out.room(9 * self.count)
        for i in range(self.count):
            out.integer_unchecked(self.indexes[i])
        out.text("duration_us")
        out.array(self.count)
        out.room(9 * self.count)
        for i in range(self.count):
            out.integer_unchecked(self.durations_us[i])
        out.text("exceptional")
        out.array(self.count)
        out.room(self.count)
        for i in range(self.count):
            out.buf[out.size + i] = 0xc3 if self.failed[i] else 0xc2
        out.size += self.count
        return out.take()


@cython.final
cdef class Writer:
    """A growing msgpack buffer."""
    cdef uint8_t *buf
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    def __cinit__(self, Py_ssize_t capacity):
        self.buf = <uint8_t *>PyMem_Malloc(capacity)
        if self.buf == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.size = 0

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef inline int room(self, Py_ssize_t more) except -1:
        cdef Py_ssize_t capacity = self.capacity
        cdef void *p
        if self.size + more <= capacity:
            return 0
        while self.size + more > capacity:
            capacity *= 2
        p = PyMem_Realloc(self.buf, capacity)
        if p == NULL:
            raise MemoryError()
        self.buf = <uint8_t *>p
        self.capacity = capacity
        return 0

    cdef inline int byte(self, uint8_t value) except -1:
        self.room(1)
        self.buf[self.size] = value
        self.size += 1
        return 0

    cdef inline void big_endian(self, uint64_t value, int width) noexcept:
        # Unrolled per width: the compiler makes each a byte swap and one store.
        cdef uint8_t *p = self.buf + self.size
        if width == 1:
            p[0] = <uint8_t>value
        elif width == 2:
            p[0] = <uint8_t>(value >> 8)
            p[1] = <uint8_t>value
        elif width == 4:
            p[0] = <uint8_t>(value >> 24)
            p[1] = <uint8_t>(value >> 16)
            p[2] = <uint8_t>(value >> 8)
            p[3] = <uint8_t>value
        else:
            p[0] = <uint8_t>(value >> 56)
            p[1] = <uint8_t>(value >> 48)
            p[2] = <uint8_t>(value >> 40)
            p[3] = <uint8_t>(value >> 32)
            p[4] = <uint8_t>(value >> 24)
            p[5] = <uint8_t>(value >> 16)
            p[6] = <uint8_t>(value >> 8)
            p[7] = <uint8_t>value
        self.size += width

    cdef int head(self, uint8_t fixed, uint64_t fixed_max, uint8_t code16, uint8_t code32,
                  uint64_t n) except -1:
        """A container's or string's header: fixed (n <= fixed_max), 16 or 32 bits."""
        self.room(5)
        if n <= fixed_max:
            self.buf[self.size] = fixed | <uint8_t>n
            self.size += 1
        elif n <= 0xffff:
            self.buf[self.size] = code16
            self.size += 1
            self.big_endian(n, 2)
        else:
            self.buf[self.size] = code32
            self.size += 1
            self.big_endian(n, 4)
        return 0

    cdef inline int array(self, Py_ssize_t n) except -1:
        return self.head(0x90, 15, 0xdc, 0xdd, n)

    cdef int text(self, str value) except -1:
        cdef Py_ssize_t n
        cdef const char *p = PyUnicode_AsUTF8AndSize(value, &n)
        self.room(5 + n)
        if n <= 31:
            self.buf[self.size] = 0xa0 | <uint8_t>n
            self.size += 1
        elif n <= 0xff:
            self.buf[self.size] = 0xd9
            self.buf[self.size + 1] = <uint8_t>n
            self.size += 2
        elif n <= 0xffff:
            self.buf[self.size] = 0xda
            self.size += 1
            self.big_endian(n, 2)
        else:
            self.buf[self.size] = 0xdb
            self.size += 1
            self.big_endian(n, 4)
        memcpy(self.buf + self.size, p, n)
        self.size += n
        return 0

    cdef int texts(self, list values) except -1:
        cdef Py_ssize_t i, n = PyList_GET_SIZE(values)
        self.array(n)
        for i in range(n):
            self.text(<str>PyList_GET_ITEM(values, i))
        return 0

    cdef inline int integer(self, int64_t value) except -1:
        self.room(9)
        self.integer_unchecked(value)
        return 0

    cdef inline void integer_unchecked(self, int64_t value) noexcept:
        """The smallest encoding of value; the caller made room for 9 bytes."""
        cdef uint8_t code
        cdef int width
        if 0 <= value <= 0x7f:
            self.buf[self.size] = <uint8_t>value
            self.size += 1
            return
        if -32 <= value < 0:
            self.buf[self.size] = <uint8_t>(<int8_t>value)
            self.size += 1
            return
        if value >= 0:
            if value <= <int64_t>0xff:
                code, width = 0xcc, 1
            elif value <= <int64_t>0xffff:
                code, width = 0xcd, 2
            elif value <= <int64_t>0xffffffff:
                code, width = 0xce, 4
            else:
                code, width = 0xcf, 8
        elif value >= -<int64_t>0x80:
            code, width = 0xd0, 1
        elif value >= -<int64_t>0x8000:
            code, width = 0xd1, 2
        elif value >= -<int64_t>0x80000000:
            code, width = 0xd2, 4
        else:
            code, width = 0xd3, 8
        self.buf[self.size] = code
        self.size += 1
        self.big_endian(<uint64_t>value, width)

    cdef bytes take(self):
        return PyBytes_FromStringAndSize(<char *>self.buf, self.size)


def dispatch_plain(list messages, Py_ssize_t position, Py_ssize_t entry, dict plain,
                   object upcast_types, Handling handling, HandlerTimings timings,
                   object handler_failed):
    """Handles messages[position:] (from handler `entry` of the first) with their plain
    handlers: `plain` maps a payload type to a tuple of (metrics code, function, decode,
    handler), each called as function(decode(message.data)). `timings` (or None) records
    each call; a failure is recorded and given to handler_failed(handler, message, exc).

    Returns (position, entry, what) where it stopped: DISPATCH_DONE at the end;
    DISPATCH_GENERAL: messages[position] needs the general path (no plain handler, or an
    upcaster applies to its type); DISPATCH_COMMIT: handler `entry` of messages[position]
    loaded aggregates, in handling.aggregates, to commit before its timing is recorded."""
    cdef Py_ssize_t n = PyList_GET_SIZE(messages)
    cdef Py_ssize_t count
    cdef object message, mtype, found, call, data
    cdef tuple calls
    cdef int64_t index
    cdef bint measure = timings is not None
    cdef bint check_upcasts = len(upcast_types) != 0
    while position < n:
        message = <object>PyList_GET_ITEM(messages, position)
        if type(message) is Message:  # the wire client's: its fields read in C
            mtype = (<Message>message).type
            data = (<Message>message).data
            index = <int64_t>(<Message>message).index
        else:  # the fixture's LocalMessage
            mtype = message.type
            data = message.data
            index = message.index if measure else 0
        found = plain.get(mtype)
        if found is None or (check_upcasts and mtype in upcast_types):
            return position, 0, DISPATCH_GENERAL
        calls = <tuple?>found
        count = PyTuple_GET_SIZE(calls)
        handling.message = message
        while entry < count:
            call = <object>PyTuple_GET_ITEM(calls, entry)
            if type(call) is not tuple or PyTuple_GET_SIZE(call) != 4:
                raise TypeError(f"a plain handler is (code, function, decode, handler), "
                                f"not {call!r}")
            handling.aggregates = None
            try:
                (<object>PyTuple_GET_ITEM(call, 1))((<object>PyTuple_GET_ITEM(call, 2))(data))
            except Exception as exc:
                if measure:
                    timings.record(<object>PyTuple_GET_ITEM(call, 0), index, True, clock_ns())
                handler_failed(<object>PyTuple_GET_ITEM(call, 3), message, exc)
                entry += 1
                continue
            if handling.aggregates:
                return position, entry, DISPATCH_COMMIT
            if measure:
                timings.record(<object>PyTuple_GET_ITEM(call, 0), index, False, clock_ns())
            entry += 1
        position += 1
        entry = 0
    return position, 0, DISPATCH_DONE
