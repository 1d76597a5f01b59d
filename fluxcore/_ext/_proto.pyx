# cython: language_level=3
"""The service's wire format in C: frames parsed many per call, messages encoded and validated
a batch per call, read batches gathered from the mapped log into one frame, and decoded back
into Message objects on the client. Layouts: docs/protocol.md and include/fc_msg.h."""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_ANY_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE
from cpython.unicode cimport PyUnicode_Check, PyUnicode_DecodeUTF8
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset

from fluxcore._ext._log cimport Batch
from fluxcore._ext.includes.fc cimport (
    BATCH_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    MSG_HEADER_SIZE,
    MSG_VERSION,
    REC_HEADER_SIZE,
    batch_header_t,
    frame_header_t,
    msg_header_t,
    crc_init,
    msg_total_size,
    rec_crc,
    rec_header_t,
    rec_stride,
    xxh64,
)

from fluxcore._ext.includes.sys cimport (
    MSG_DONTWAIT,
    MSG_NOSIGNAL,
    iovec,
    msghdr,
    sendmsg,
    ssize_t,
)

import numpy as np

cnp.import_array()
crc_init()  # this module's own copy of the CRC32C code picks its implementation here

include "consts.pxi"
include "proto_consts.pxi"

OP_APPEND_CODE = OP_APPEND
OP_BATCH_CODE = OP_BATCH


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL


class FrameError(ValueError):
    """A frame or message that does not follow the protocol."""


# -- frames ---------------------------------------------------------------------------------

def frame_scan(buffer, Py_ssize_t start, Py_ssize_t end, uint32_t max_frame):
    """Finds the complete frames in buffer[start:end]. Returns (frames, consumed, needed):
    frames is a list of (op, flags, request_id, body_start, body_end); consumed is the offset
    after the last complete frame; needed is the total size of the incomplete frame at
    `consumed` (0 if only its length is missing). A length under 8 or over max_frame raises
    FrameError."""
    cdef Py_buffer view
    cdef const char *p
    cdef frame_header_t h
    cdef Py_ssize_t pos = start
    cdef uint64_t total
    cdef list frames = []
    cdef Py_ssize_t needed = 0
    PyObject_GetBuffer(buffer, &view, PyBUF_ANY_CONTIGUOUS)
    try:
        if end > view.len or start < 0 or start > end:
            raise ValueError("range outside the buffer")
        p = <const char *>view.buf
        while end - pos >= 4:
            memcpy(&h.length, p + pos, 4)
            if h.length < FRAME_HEADER_SIZE - 4 or h.length > max_frame:
                raise FrameError(f"frame length {h.length} is outside 8..{max_frame}")
            total = 4 + <uint64_t>h.length
            if <uint64_t>(end - pos) < total:
                needed = <Py_ssize_t>total
                break
            memcpy(&h, p + pos, FRAME_HEADER_SIZE)
            frames.append((h.op, h.flags, h.request_id, pos + FRAME_HEADER_SIZE,
                           pos + <Py_ssize_t>total))
            pos += <Py_ssize_t>total
        return frames, pos, needed
    finally:
        PyBuffer_Release(&view)


def frame_header(uint8_t op, uint32_t request_id, Py_ssize_t body_size):
    """The 12 header bytes of a frame whose body has body_size bytes."""
    cdef frame_header_t h
    h.length = <uint32_t>(body_size + FRAME_HEADER_SIZE - 4)
    h.op = op
    h.flags = 0
    h.reserved = 0
    h.request_id = request_id
    return PyBytes_FromStringAndSize(<char *>&h, FRAME_HEADER_SIZE)


# -- appends --------------------------------------------------------------------------------

def append_parse(buffer, Py_ssize_t start, Py_ssize_t end):
    """Validates an APPEND body at buffer[start:end]. Returns (type_code, guarantee, topic,
    offsets, segments, first_id): offsets (int64, count+1) bound each message within `buffer`,
    so the log can take them in one call without a copy; first_id is the first message's id
    (bytes; None for an empty append), the key that spots a resent append."""
    cdef Py_buffer view
    cdef const char *p
    cdef Py_ssize_t pos, i, n
    cdef uint16_t topic_len
    cdef uint32_t count, size
    cdef uint8_t type_code, guarantee
    cdef const char *sizes
    cdef const uint8_t *segs
    cdef int64_t off
    cdef msg_header_t h
    cdef cnp.ndarray offsets, segments
    cdef int64_t *o
    cdef str topic
    PyObject_GetBuffer(buffer, &view, PyBUF_ANY_CONTIGUOUS)
    try:
        if end > view.len or start < 0 or end - start < 8:
            raise FrameError("APPEND body shorter than its 8-byte header")
        p = <const char *>view.buf
        type_code = <uint8_t>p[start]
        guarantee = <uint8_t>p[start + 1]
        memcpy(&topic_len, p + start + 2, 2)
        pos = start + 4
        if pos + topic_len + 4 > end:
            raise FrameError("APPEND topic runs past the frame")
        topic = PyUnicode_DecodeUTF8(p + pos, topic_len, "strict") if topic_len else None
        pos += topic_len
        memcpy(&count, p + pos, 4)
        pos += 4
        n = count
        if n > (end - pos) // 5:
            raise FrameError(f"APPEND of {count} messages does not fit its frame")
        sizes = p + pos
        segs = <const uint8_t *>(p + pos + 4 * n)
        pos += 5 * n
        offsets = cnp.PyArray_EMPTY(1, [n + 1], cnp.NPY_INT64, 0)
        o = <int64_t *>cnp.PyArray_DATA(offsets)
        off = pos
        for i in range(n):
            memcpy(&size, sizes + 4 * i, 4)
            if segs[i] >= SEGMENTS:
                raise FrameError(f"message {i}: segment {segs[i]} is outside 0..127")
            if size < MSG_HEADER_SIZE or off + size > end:
                raise FrameError(f"message {i}: size {size} does not fit the frame")
            memcpy(&h, p + off, MSG_HEADER_SIZE)
            if h.version != MSG_VERSION:
                raise FrameError(f"message {i}: unknown message version {h.version}")
            if msg_total_size(&h) != size:
                raise FrameError(f"message {i}: field lengths add up to {msg_total_size(&h)}, "
                                 f"not its size {size}")
            o[i] = off
            off += size
        o[n] = off
        if off != end:
            raise FrameError(f"APPEND has {end - off} bytes after its last message")
        segments = cnp.PyArray_EMPTY(1, [n], cnp.NPY_UINT8, 0)
        first_id = None
        if n:
            memcpy(cnp.PyArray_DATA(segments), segs, n)
            memcpy(&h, p + o[0], MSG_HEADER_SIZE)
            first_id = PyBytes_FromStringAndSize(p + o[0] + MSG_HEADER_SIZE + h.type_len,
                                                 h.message_id_len)
        return type_code, guarantee, topic, offsets, segments, first_id
    finally:
        PyBuffer_Release(&view)


cdef inline int text_arg(object value, const char **ptr, Py_ssize_t *size,
                         Py_ssize_t limit, str name) except -1:
    if value is None:
        ptr[0] = b""
        size[0] = 0
    elif PyUnicode_Check(value):
        ptr[0] = PyUnicode_AsUTF8AndSize(value, size)
    elif PyBytes_CheckExact(value):
        ptr[0] = PyBytes_AS_STRING(value)
        size[0] = PyBytes_GET_SIZE(value)
    else:
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    if size[0] > limit:
        raise ValueError(f"{name} is {size[0]} bytes, more than {limit}")
    return 0


cdef inline char *put(char *w, const char *src, Py_ssize_t n) noexcept nogil:
    if n:
        memcpy(w, src, n)
    return w + n


cdef inline Py_ssize_t format_id(char *out, const char *prefix, Py_ssize_t prefix_len,
                                 uint64_t counter) noexcept nogil:
    # message id = prefix + 16 lowercase hex digits of the counter
    cdef Py_ssize_t i
    memcpy(out, prefix, prefix_len)
    for i in range(16):
        out[prefix_len + 15 - i] = b"0123456789abcdef"[counter & 15]
        counter >>= 4
    return prefix_len + 16


def encode_append(uint32_t request_id, uint8_t type_code, uint8_t guarantee, topic, payloads,
                  payload_type, keys, source, id_prefix, uint64_t id_counter,
                  bytes metadata=None, int64_t timestamp=0, int64_t message_request_id=-1,
                  target=None, uint8_t flags=0, uint32_t revision=0, payload_format=None,
                  segments=None, targets=None, request_ids=None, payload_types=None,
                  revisions=None):
    """One APPEND frame (header included) carrying every payload as a message. Message ids are
    id_prefix + the hex of id_counter, id_counter + 1, ...; a message's segment is its key's,
    or its id's when there is no key, unless `segments` gives them. `targets` and
    `request_ids` (sequences) give each message its own target and request id, as results
    answering many requests need; `payload_types` its own payload type, as the events of one
    aggregate have; `revisions` its own payload revision (0 to 2**32 - 1), instead of
    `revision` for all. Returns (frame bytes, the next id counter)."""
    cdef object seq = PySequence_Fast(payloads, "payloads must be a sequence of bytes")
    cdef object key_seq = None
    cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq)
    cdef Py_ssize_t i, total, topic_len, type_len, source_len, prefix_len, target_len
    cdef Py_ssize_t format_len, meta_len, key_len, id_len, fixed
    cdef const char *topic_p
    cdef const char *type_p
    cdef const char *source_p
    cdef const char *prefix_p
    cdef const char *target_p
    cdef const char *format_p
    cdef const char *meta_p
    cdef const char *key_p
    cdef object item, out
    cdef char *w
    cdef char *sizes
    cdef uint8_t *segs
    cdef uint32_t size, count32
    cdef uint16_t u16
    cdef msg_header_t h
    cdef char id_buf[256]
    cdef const uint8_t *seg_in = NULL
    cdef cnp.ndarray seg_arr, rid_arr, rev_arr
    cdef object target_seq = None
    cdef object types_seq = None
    cdef const int64_t *rid_in = NULL
    cdef const int64_t *rev_in = NULL
    cdef const char *each_p
    cdef Py_ssize_t each_len = 0
    text_arg(topic, &topic_p, &topic_len, 100, "topic")
    text_arg(payload_type, &type_p, &type_len, 65535, "payload type")
    text_arg(source, &source_p, &source_len, 65535, "source")
    text_arg(id_prefix, &prefix_p, &prefix_len, 200, "message id prefix")
    text_arg(target, &target_p, &target_len, 65535, "target")
    text_arg(payload_format, &format_p, &format_len, 65535, "format")
    text_arg(metadata, &meta_p, &meta_len, 0xFFFFFFFF, "metadata")
    if keys is not None:
        key_seq = PySequence_Fast(keys, "keys must be a sequence of str or bytes")
        if PySequence_Fast_GET_SIZE(key_seq) != n:
            raise ValueError(f"got {PySequence_Fast_GET_SIZE(key_seq)} keys for {n} payloads")
    if segments is not None:
        seg_arr = np.ascontiguousarray(segments, dtype=np.uint8)
        if seg_arr.shape[0] != n or (n and seg_arr.max() >= SEGMENTS):
            raise ValueError("segments must give one value in 0..127 per payload")
        seg_in = <const uint8_t *>cnp.PyArray_DATA(seg_arr)
    if request_ids is not None:
        rid_arr = np.ascontiguousarray(request_ids, dtype=np.int64)
        if rid_arr.shape[0] != n:
            raise ValueError("request_ids must give one value per payload")
        rid_in = <const int64_t *>cnp.PyArray_DATA(rid_arr)
    if revisions is not None:
        rev_arr = np.ascontiguousarray(revisions, dtype=np.int64)
        if rev_arr.ndim != 1 or rev_arr.shape[0] != n:
            raise ValueError("revisions must give one value per payload")
        if n and (rev_arr.min() < 0 or rev_arr.max() > 0xFFFFFFFF):
            raise ValueError("a revision is 0 to 2**32 - 1")
        rev_in = <const int64_t *>cnp.PyArray_DATA(rev_arr)
    id_len = prefix_len + 16
    fixed = MSG_HEADER_SIZE + type_len + id_len + source_len + target_len + format_len + meta_len
    total = FRAME_HEADER_SIZE + 8 + topic_len + 5 * n + fixed * n
    if targets is not None:
        if target_len:
            raise ValueError("give a target or targets, not both")
        target_seq = PySequence_Fast(targets, "targets must be a sequence of str")
        if PySequence_Fast_GET_SIZE(target_seq) != n:
            raise ValueError("targets must give one value per payload")
        for i in range(n):
            text_arg(<object>PySequence_Fast_GET_ITEM(target_seq, i), &each_p, &each_len,
                     65535, "target")
            total += each_len
    if payload_types is not None:
        if type_len:
            raise ValueError("give a payload_type or payload_types, not both")
        types_seq = PySequence_Fast(payload_types, "payload_types must be a sequence of str")
        if PySequence_Fast_GET_SIZE(types_seq) != n:
            raise ValueError("payload_types must give one value per payload")
        for i in range(n):
            text_arg(<object>PySequence_Fast_GET_ITEM(types_seq, i), &each_p, &each_len,
                     65535, "payload type")
            total += each_len
    for i in range(n):
        item = <object>PySequence_Fast_GET_ITEM(seq, i)
        if not PyBytes_CheckExact(item):
            raise TypeError(f"payload {i} must be bytes, not {type(item).__name__}")
        total += PyBytes_GET_SIZE(item)
    if total > 0xFFFFFFFF:
        raise ValueError("an APPEND frame must stay under 4 GiB")
    out = PyBytes_FromStringAndSize(NULL, total)
    w = PyBytes_AS_STRING(out)
    # frame header
    size = <uint32_t>(total - 4)
    memcpy(w, &size, 4)
    w[4] = OP_APPEND
    w[5] = 0
    w[6] = 0
    w[7] = 0
    memcpy(w + 8, &request_id, 4)
    w += FRAME_HEADER_SIZE
    w[0] = <char>type_code
    w[1] = <char>guarantee
    u16 = <uint16_t>topic_len
    memcpy(w + 2, &u16, 2)
    w = put(w + 4, topic_p, topic_len)
    count32 = <uint32_t>n
    memcpy(w, &count32, 4)
    w += 4
    sizes = w
    segs = <uint8_t *>(w + 4 * n)
    w += 5 * n
    h.version = MSG_VERSION
    h.flags = flags
    h.type_len = <uint16_t>type_len
    h.message_id_len = <uint16_t>id_len
    h.source_len = <uint16_t>source_len
    h.target_len = <uint16_t>target_len
    h.format_len = <uint16_t>format_len
    h.revision = revision
    h.metadata_len = <uint32_t>meta_len
    h.timestamp = timestamp
    h.request_id = message_request_id
    for i in range(n):
        item = <object>PySequence_Fast_GET_ITEM(seq, i)
        h.data_len = <uint32_t>PyBytes_GET_SIZE(item)
        if target_seq is not None:
            text_arg(<object>PySequence_Fast_GET_ITEM(target_seq, i), &target_p, &target_len,
                     65535, "target")
            h.target_len = <uint16_t>target_len
        if rid_in != NULL:
            h.request_id = rid_in[i]
        if rev_in != NULL:
            h.revision = <uint32_t>rev_in[i]
        if types_seq is not None:
            text_arg(<object>PySequence_Fast_GET_ITEM(types_seq, i), &type_p, &type_len,
                     65535, "payload type")
            h.type_len = <uint16_t>type_len
        # `fixed` counts the shared target and type; a message's own ones come on top.
        size = <uint32_t>(fixed + h.data_len)
        if target_seq is not None:
            size += <uint32_t>target_len
        if types_seq is not None:
            size += <uint32_t>type_len
        memcpy(sizes + 4 * i, &size, 4)
        format_id(id_buf, prefix_p, prefix_len, id_counter + <uint64_t>i)
        if seg_in != NULL:
            segs[i] = seg_in[i]
        elif key_seq is not None:
            text_arg(<object>PySequence_Fast_GET_ITEM(key_seq, i), &key_p, &key_len,
                     0x7FFFFFFF, "key")
            segs[i] = <uint8_t>(xxh64(key_p, <size_t>key_len, 0) % SEGMENTS)
        else:
            segs[i] = <uint8_t>(xxh64(id_buf, <size_t>id_len, 0) % SEGMENTS)
        memcpy(w, &h, MSG_HEADER_SIZE)
        w = put(w + MSG_HEADER_SIZE, type_p, type_len)
        w = put(w, id_buf, id_len)
        w = put(w, source_p, source_len)
        w = put(w, target_p, target_len)
        w = put(w, format_p, format_len)
        w = put(w, meta_p, meta_len)
        w = put(w, PyBytes_AS_STRING(item), h.data_len)
    return out, id_counter + <uint64_t>n


def stream_records(buffer, const int64_t[::1] offsets, const uint8_t[::1] segments,
                   Py_ssize_t start, Py_ssize_t stop, uint64_t first_number):
    """Messages start..stop-1 of a parsed APPEND (buffer[offsets[i]:offsets[i + 1]], segment
    segments[i]) as records in the log's layout, one bytes object each, numbered
    first_number, first_number + 1, ... in the index field: an aggregate's events as they are
    stored, ready to go out back to back in a BATCH."""
    cdef Py_buffer view
    cdef const char *p
    cdef Py_ssize_t i
    cdef uint32_t length
    cdef uint64_t stride
    cdef char *w
    cdef rec_header_t h
    cdef list out
    cdef object rec
    if not 0 <= start <= stop < offsets.shape[0] or segments.shape[0] < stop:
        raise ValueError("start and stop must be message positions of the APPEND")
    PyObject_GetBuffer(buffer, &view, PyBUF_ANY_CONTIGUOUS)
    try:
        if offsets[stop] > view.len or offsets[start] < 0:
            raise ValueError("offsets run past the buffer")
        p = <const char *>view.buf
        out = PyList_New(stop - start)
        for i in range(start, stop):
            length = <uint32_t>(REC_HEADER_SIZE + offsets[i + 1] - offsets[i])
            stride = rec_stride(length)
            rec = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>stride)
            w = PyBytes_AS_STRING(rec)
            h.length = length
            h.crc = 0
            h.index = first_number + <uint64_t>(i - start)
            h.segment = segments[i]
            h.flags = 0
            h.reserved = 0
            memcpy(w, &h, REC_HEADER_SIZE)
            memcpy(w + REC_HEADER_SIZE, p + offsets[i], length - REC_HEADER_SIZE)
            memset(w + length, 0, stride - length)
            h.crc = rec_crc(w, length)
            memcpy(w + 4, &h.crc, 4)
            Py_INCREF(rec)
            PyList_SET_ITEM(out, i - start, rec)
        return out
    finally:
        PyBuffer_Release(&view)


# -- read batches (server) ------------------------------------------------------------------

cdef inline const char *msg_target(const char *msg, uint16_t *length) noexcept nogil:
    cdef const msg_header_t *h = <const msg_header_t *>msg
    length[0] = h.target_len
    return msg + MSG_HEADER_SIZE + h.type_len + h.message_id_len + h.source_len


cdef inline bint target_allows(const char *msg, const char *client, Py_ssize_t client_len,
                               const char *tracker, Py_ssize_t tracker_len) noexcept nogil:
    # Reference rule: no target passes; a target passes if it names this tracker or client.
    cdef uint16_t n
    cdef const char *t = msg_target(msg, &n)
    if n == 0:
        return True
    if n == tracker_len and memcmp(t, tracker, n) == 0:
        return True
    return n == client_len and memcmp(t, client, n) == 0


def type_hashes(Batch batch):
    """xxh64 of each record's payload type (for type filters: one regex test per distinct
    type, then a vectorised mask)."""
    cdef Py_ssize_t n = len(batch)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, [n], cnp.NPY_UINT64, 0)
    cdef uint64_t *o = <uint64_t *>cnp.PyArray_DATA(out)
    cdef Py_ssize_t i
    cdef const char *msg
    for i in range(n):
        msg = batch.base + batch.off_ptr[i]
        if batch.len_ptr[i] < MSG_HEADER_SIZE:
            o[i] = 0
        else:
            o[i] = xxh64(msg + MSG_HEADER_SIZE, (<const msg_header_t *>msg).type_len, 0)
    return out


cdef inline bint msg_id_of(const char *msg, Py_ssize_t size, const char **id_ptr,
                           Py_ssize_t *id_len) noexcept nogil:
    """The message id of a stored message of `size` bytes; False if it has no room for one."""
    cdef const msg_header_t *h = <const msg_header_t *>msg
    if size < MSG_HEADER_SIZE or MSG_HEADER_SIZE + h.type_len + h.message_id_len > size:
        return False
    id_ptr[0] = msg + MSG_HEADER_SIZE + h.type_len
    id_len[0] = h.message_id_len
    return True


def find_stored_run(Batch batch, Py_ssize_t start, buffer, const int64_t[::1] offsets,
                    Py_ssize_t first):
    """Looks in `batch`, from record `start` on, for message `first` of an APPEND (message i
    is buffer[offsets[i]:offsets[i + 1]], as append_parse bounds it), by message id. Returns
    (position, count): the record that holds it, and how many records from there hold the
    messages first, first + 1, ... in that order; (-1, 0) if it is not in the batch."""
    cdef Py_buffer view
    cdef const char *p
    cdef const char *want
    cdef const char *have
    cdef Py_ssize_t want_len, have_len, i, n = len(batch), total = offsets.shape[0] - 1
    cdef Py_ssize_t position = -1, count = 0
    if first < 0 or first >= total or start < 0:
        raise ValueError("message or record position out of range")
    PyObject_GetBuffer(buffer, &view, PyBUF_ANY_CONTIGUOUS)
    try:
        if offsets[0] < 0 or offsets[total] > view.len:
            raise ValueError("offsets outside the buffer")
        p = <const char *>view.buf
        if not msg_id_of(p + offsets[first], offsets[first + 1] - offsets[first],
                         &want, &want_len):
            raise FrameError(f"message {first} has no room for its message id")
        for i in range(start, n):
            if (msg_id_of(batch.base + batch.off_ptr[i], batch.len_ptr[i], &have, &have_len)
                    and have_len == want_len and memcmp(have, want, want_len) == 0):
                position = i
                break
        if position < 0:
            return -1, 0
        count = 1
        i = position + 1
        while i < n and first + count < total:
            if not msg_id_of(p + offsets[first + count],
                             offsets[first + count + 1] - offsets[first + count],
                             &want, &want_len):
                break
            if not (msg_id_of(batch.base + batch.off_ptr[i], batch.len_ptr[i], &have,
                              &have_len)
                    and have_len == want_len and memcmp(have, want, want_len) == 0):
                break
            count += 1
            i += 1
        return position, count
    finally:
        PyBuffer_Release(&view)


def record_targets(Batch batch):
    """The target of each record of `batch` (str; "" for none): the web proxy routes responses
    by it."""
    cdef Py_ssize_t n = len(batch)
    cdef list out = PyList_New(n)
    cdef Py_ssize_t i
    cdef const char *msg
    cdef const char *t
    cdef uint16_t t_len
    cdef object text
    for i in range(n):
        msg = batch.base + batch.off_ptr[i]
        if batch.len_ptr[i] < MSG_HEADER_SIZE:
            text = ""
        else:
            t = msg_target(msg, &t_len)
            text = PyUnicode_DecodeUTF8(t, t_len, "replace") if t_len else ""
        Py_INCREF(text)
        PyList_SET_ITEM(out, i, text)
    return out


def record_type(Batch batch, Py_ssize_t i):
    """The payload type of record i, as str."""
    cdef const char *msg = batch.base + batch.off_ptr[i]
    if batch.len_ptr[i] < MSG_HEADER_SIZE:
        return ""
    return PyUnicode_DecodeUTF8(msg + MSG_HEADER_SIZE, (<const msg_header_t *>msg).type_len,
                                "replace")


def batch_frame(uint32_t request_id, Batch batch, positions, client_id, tracker_id,
                bint filter_target, type_mask, int seg_start, int seg_end,
                uint64_t last_index, bint caught_up):
    """One BATCH frame (header included) with the records of `batch` that pass the filters:
    index above the consumer's position of their segment (positions: uint64[128] or None),
    the target rule, and type_mask (bool per record, or None). Records are copied as the log
    stores them, one memcpy each. Returns (frame bytes, count)."""
    cdef Py_ssize_t n = len(batch)
    cdef Py_ssize_t i, count = 0
    cdef uint64_t total = FRAME_HEADER_SIZE + BATCH_HEADER_SIZE
    cdef const uint64_t *pos = NULL
    cdef const uint8_t *mask = NULL
    cdef const uint8_t *segs
    cdef cnp.ndarray pos_arr, mask_arr, keep_arr
    cdef uint8_t *keep
    cdef const char *client_p
    cdef const char *tracker_p
    cdef Py_ssize_t client_len = 0, tracker_len = 0
    cdef const char *base = batch.base
    cdef uint64_t stride
    cdef char *w
    cdef object out
    text_arg(client_id, &client_p, &client_len, 65535, "client id")
    text_arg(tracker_id, &tracker_p, &tracker_len, 65535, "tracker id")
    if positions is not None:
        pos_arr = np.ascontiguousarray(positions, dtype=np.uint64)
        if pos_arr.shape[0] != SEGMENTS:
            raise ValueError("positions must have 128 entries")
        pos = <const uint64_t *>cnp.PyArray_DATA(pos_arr)
    if type_mask is not None:
        mask_arr = np.ascontiguousarray(type_mask, dtype=np.uint8)
        if mask_arr.shape[0] != n:
            raise ValueError("type_mask must have one entry per record")
        mask = <const uint8_t *>cnp.PyArray_DATA(mask_arr)
    segs = <const uint8_t *>cnp.PyArray_DATA(batch.segments)
    keep_arr = cnp.PyArray_EMPTY(1, [n], cnp.NPY_UINT8, 0)
    keep = <uint8_t *>cnp.PyArray_DATA(keep_arr)
    for i in range(n):
        keep[i] = 1
        if pos != NULL and batch.idx_ptr[i] <= pos[segs[i]]:
            keep[i] = 0
        elif mask != NULL and not mask[i]:
            keep[i] = 0
        elif filter_target and (batch.len_ptr[i] < MSG_HEADER_SIZE or not target_allows(
                base + batch.off_ptr[i], client_p, client_len, tracker_p, tracker_len)):
            keep[i] = 0
        if keep[i]:
            total += rec_stride(REC_HEADER_SIZE + <uint64_t>batch.len_ptr[i])
            count += 1
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
    w = PyBytes_AS_STRING(out)
    put_batch_headers(w, request_id, total, seg_start, seg_end, last_index, caught_up,
                      <uint32_t>count)
    w += FRAME_HEADER_SIZE + BATCH_HEADER_SIZE
    with nogil:
        for i in range(n):
            if keep[i]:
                stride = rec_stride(REC_HEADER_SIZE + <uint64_t>batch.len_ptr[i])
                memcpy(w, base + batch.off_ptr[i] - REC_HEADER_SIZE, stride)
                w += stride
    return out, count


def join_batch_frames(list frames, uint32_t request_id, int seg_start, int seg_end,
                      uint64_t last_index, bint caught_up):
    """One BATCH frame with the records of `frames` (BATCH frames from batch_frame), in
    order, under new headers. Returns (frame bytes, count)."""
    cdef uint64_t total = FRAME_HEADER_SIZE + BATCH_HEADER_SIZE
    cdef uint32_t count = 0
    cdef bytes part
    cdef Py_ssize_t size
    cdef char *w
    cdef object out
    for part in frames:
        if len(part) < FRAME_HEADER_SIZE + BATCH_HEADER_SIZE:
            raise ValueError("not a BATCH frame")
        total += <uint64_t>len(part) - FRAME_HEADER_SIZE - BATCH_HEADER_SIZE
        count += (<const batch_header_t *>(PyBytes_AS_STRING(part) + FRAME_HEADER_SIZE)).count
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
    w = PyBytes_AS_STRING(out)
    put_batch_headers(w, request_id, total, seg_start, seg_end, last_index, caught_up, count)
    w += FRAME_HEADER_SIZE + BATCH_HEADER_SIZE
    for part in frames:
        size = len(part) - FRAME_HEADER_SIZE - BATCH_HEADER_SIZE
        memcpy(w, PyBytes_AS_STRING(part) + FRAME_HEADER_SIZE + BATCH_HEADER_SIZE, size)
        w += size
    return out, count


def empty_batch_frame(uint32_t request_id, int seg_start, int seg_end, uint64_t last_index,
                      bint caught_up):
    cdef char buf[36]  # frame header + batch header
    put_batch_headers(buf, request_id, FRAME_HEADER_SIZE + BATCH_HEADER_SIZE, seg_start,
                      seg_end, last_index, caught_up, 0)
    return PyBytes_FromStringAndSize(buf, FRAME_HEADER_SIZE + BATCH_HEADER_SIZE)


# A socket frame_send_each() did not write to: its transport has bytes queued (the frame must
# go behind them) or is closing. Its read is answered the ordinary way.
cdef int64_t SKIPPED = -(<int64_t>1 << 40)
cdef int64_t TO_SEND = -(<int64_t>1 << 41)  # marks the sends to make, in send_each()
SEND_SKIPPED = SKIPPED


cdef int64_t send_spliced(int fd, const unsigned char *frame, Py_ssize_t size,
                          uint32_t request_id) noexcept nogil:
    """One non-blocking sendmsg of `frame` with `request_id` spliced in (no copy): the bytes
    written, 0 if the socket would block, -errno on another error."""
    cdef unsigned char rid[4]
    rid[0] = request_id & 0xFF  # little endian, as every integer of the protocol
    rid[1] = (request_id >> 8) & 0xFF
    rid[2] = (request_id >> 16) & 0xFF
    rid[3] = (request_id >> 24) & 0xFF
    cdef iovec iov[3]
    cdef msghdr msg
    memset(&msg, 0, sizeof(msg))
    iov[0].iov_base = <void *>frame
    iov[0].iov_len = 8  # length, op, flags, reserved: the request id follows
    iov[1].iov_base = <void *>rid
    iov[1].iov_len = 4
    iov[2].iov_base = <void *>(frame + FRAME_HEADER_SIZE)
    iov[2].iov_len = <size_t>(size - FRAME_HEADER_SIZE)
    msg.msg_iov = iov
    msg.msg_iovlen = 3
    cdef ssize_t written = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
    if written >= 0:
        return written
    if errno == EAGAIN or errno == EINTR:  # EWOULDBLOCK is EAGAIN on Linux
        return 0
    return -errno


cdef Py_ssize_t send_each(const unsigned char *frame, Py_ssize_t size, const int *fds,
                          const uint32_t *request_ids, int64_t *sent, Py_ssize_t count,
                          int max_fd) noexcept nogil:
    """The sends of frame_send_each(); returns how many were whole. After a socket took only
    part of a frame (or nothing), later frames for it are not written (0): they go behind
    the rest, through its transport, so that a connection's frames never interleave."""
    cdef Py_ssize_t i, j, whole = 0
    cdef int fd
    cdef unsigned char *blocked = NULL  # one byte per descriptor, made at the first block
    for i in range(count):
        if sent[i] != TO_SEND:
            continue
        fd = fds[i]
        if blocked != NULL and blocked[fd]:
            sent[i] = 0
            continue
        sent[i] = send_spliced(fd, frame, size, request_ids[i])
        if sent[i] == size:
            whole += 1
        else:
            if blocked == NULL:
                blocked = <unsigned char *>calloc(<size_t>max_fd + 1, 1)
                if blocked == NULL:  # no memory for the map: nothing more is written here
                    for j in range(i + 1, count):
                        if sent[j] == TO_SEND:
                            sent[j] = 0
                    return whole
            blocked[fd] = 1
    free(blocked)
    return whole


def frame_send_each(const unsigned char[::1] frame, list transports, const int[::1] fds,
                    const uint32_t[::1] request_ids, int64_t[::1] sent):
    """Writes `frame` to many sockets, to socket `fds[i]` with `request_ids[i]` in place of
    its own, each in one non-blocking sendmsg without a copy, the GIL released for the
    sends. `transports[i]` is the asyncio transport of `fds[i]`: a socket whose transport
    has bytes queued or is closing is not written to (sent[i] = SEND_SKIPPED), nor is a
    descriptor below 0 (sent[i] = 0: a TLS connection). Else sent[i] is the bytes written:
    the size of the frame, less if the socket took only part of it (the caller sends the
    rest through the transport, in order), or -errno. Returns how many went whole. A socket
    may appear more than once: its frames leave in the order given."""
    cdef Py_ssize_t size = frame.shape[0]
    cdef Py_ssize_t count = len(transports), i
    if size < FRAME_HEADER_SIZE:
        raise FrameError(f"a frame of {size} bytes has no header")
    if fds.shape[0] < count or request_ids.shape[0] < count or sent.shape[0] < count:
        raise ValueError("fds, request_ids and sent must have an entry per transport")
    cdef int max_fd = 0
    for i in range(count):
        transport = transports[i]
        if transport.get_write_buffer_size() or transport.is_closing():
            sent[i] = SKIPPED
        elif fds[i] < 0:
            sent[i] = 0
        else:
            sent[i] = TO_SEND
            if fds[i] > max_fd:
                max_fd = fds[i]
    if count == 0:
        return 0
    cdef Py_ssize_t whole
    with nogil:
        whole = send_each(&frame[0], size, &fds[0], &request_ids[0], &sent[0], count, max_fd)
    return whole


cdef void put_batch_headers(char *w, uint32_t request_id, uint64_t total, int seg_start,
                            int seg_end, uint64_t last_index, bint caught_up,
                            uint32_t count) noexcept:
    """The frame header and the batch header of a BATCH frame of `total` bytes."""
    cdef frame_header_t fh
    cdef batch_header_t bh
    fh.length = <uint32_t>(total - 4)
    fh.op = OP_BATCH
    fh.flags = 0
    fh.reserved = 0
    fh.request_id = request_id
    memcpy(w, &fh, FRAME_HEADER_SIZE)
    memset(&bh, 0, BATCH_HEADER_SIZE)
    bh.segment_start = <uint16_t>seg_start
    bh.segment_end = <uint16_t>seg_end
    bh.caught_up = caught_up
    bh.last_index = last_index
    bh.count = count
    memcpy(w + FRAME_HEADER_SIZE, &bh, BATCH_HEADER_SIZE)


# -- messages (client) ----------------------------------------------------------------------

@cython.final
@cython.no_gc  # see _proto.pxd
cdef class Message:
    """A message as read from the service."""
    # Its fields are declared in _proto.pxd (the microclient's dispatch loop reads them).

    @property
    def message_id(self):
        """The message id as str (decoded on first use)."""
        if self._message_id is None:
            self._message_id = PyUnicode_DecodeUTF8(self._message_id_raw, self._message_id_len,
                                                    "replace")
        return self._message_id

    @property
    def metadata(self):
        """The metadata as a dict of str to str (decoded on first use)."""
        if self._metadata is None:
            self._metadata = decode_metadata(self._metadata_raw)
        return self._metadata

    @property
    def is_error(self):
        return bool(self.flags & MSG_FLAG_ERROR)

    def __repr__(self):
        return (f"Message(index={self.index}, type={self.type!r}, segment={self.segment}, "
                f"data={self.data[:40]!r}{'...' if len(self.data) > 40 else ''})")


cdef object decode_metadata_impl = None


def set_metadata_decoder(decoder):
    """The function that turns metadata bytes into a dict (msgpack, from fluxcore.messages)."""
    global decode_metadata_impl
    decode_metadata_impl = decoder


cdef object decode_metadata(bytes raw):
    if not raw:
        return {}
    return decode_metadata_impl(raw)


cdef class _TextCache:
    # Payload types, sources and formats repeat within a batch: decode each distinct value once.
    cdef const char *last_p
    cdef Py_ssize_t last_n
    cdef str last

    cdef inline str get(self, const char *p, Py_ssize_t n):
        if n == 0:
            return ""
        if self.last is not None and n == self.last_n and memcmp(p, self.last_p, n) == 0:
            self.last_p = p
            return self.last
        self.last = PyUnicode_DecodeUTF8(p, n, "replace")
        self.last_p = p
        self.last_n = n
        return self.last


def decode_batch(buffer, Py_ssize_t start, Py_ssize_t end):
    """Decodes a BATCH body at buffer[start:end]: returns (segment_start, segment_end,
    caught_up, last_index, list of Message)."""
    cdef Py_buffer view
    cdef const char *p
    cdef batch_header_t bh
    cdef Py_ssize_t pos, i
    cdef uint32_t length
    cdef uint64_t stride
    cdef const char *rec
    cdef const char *m
    cdef msg_header_t h
    cdef list out
    cdef Message msg
    cdef _TextCache types = _TextCache(), sources = _TextCache(), formats = _TextCache()
    cdef _TextCache targets = _TextCache()
    cdef Py_ssize_t mlen
    PyObject_GetBuffer(buffer, &view, PyBUF_ANY_CONTIGUOUS)
    try:
        if end > view.len or start < 0 or end - start < BATCH_HEADER_SIZE:
            raise FrameError("BATCH body shorter than its header")
        p = <const char *>view.buf
        memcpy(&bh, p + start, BATCH_HEADER_SIZE)
        pos = start + BATCH_HEADER_SIZE
        if bh.count > <uint64_t>(end - pos) // (REC_HEADER_SIZE + MSG_HEADER_SIZE):
            raise FrameError(f"BATCH of {bh.count} records does not fit its frame")
        out = PyList_New(bh.count)
        for i in range(bh.count):
            if pos + REC_HEADER_SIZE > end:
                raise FrameError(f"record {i} runs past the frame")
            rec = p + pos
            memcpy(&length, rec, 4)
            stride = rec_stride(length)
            if length < REC_HEADER_SIZE + MSG_HEADER_SIZE or pos + <Py_ssize_t>stride > end:
                raise FrameError(f"record {i} has a bad length {length}")
            m = rec + REC_HEADER_SIZE
            mlen = length - REC_HEADER_SIZE
            memcpy(&h, m, MSG_HEADER_SIZE)
            if msg_total_size(&h) != <uint64_t>mlen:
                raise FrameError(f"record {i}: message field lengths do not add up")
            msg = Message.__new__(Message)
            memcpy(&msg.index, rec + 8, 8)
            msg.segment = (<const uint8_t *>rec)[16]
            m += MSG_HEADER_SIZE
            msg.type = types.get(m, h.type_len)
            m += h.type_len
            if h.message_id_len <= MESSAGE_ID_INLINE:
                memcpy(msg._message_id_raw, m, h.message_id_len)
                msg._message_id_len = <uint8_t>h.message_id_len
            else:
                msg._message_id = PyUnicode_DecodeUTF8(m, h.message_id_len, "replace")
            m += h.message_id_len
            msg.source = sources.get(m, h.source_len)
            m += h.source_len
            msg.target = targets.get(m, h.target_len)
            m += h.target_len
            msg.format = formats.get(m, h.format_len)
            m += h.format_len
            msg._metadata_raw = PyBytes_FromStringAndSize(m, h.metadata_len) \
                if h.metadata_len else b""
            m += h.metadata_len
            msg.data = PyBytes_FromStringAndSize(m, h.data_len)
            msg.revision = h.revision
            msg.timestamp = h.timestamp
            msg.request_id = h.request_id
            msg.flags = h.flags
            Py_INCREF(msg)
            PyList_SET_ITEM(out, i, msg)
            pos += <Py_ssize_t>stride
        return bh.segment_start, bh.segment_end, bool(bh.caught_up), bh.last_index, out
    finally:
        PyBuffer_Release(&view)
