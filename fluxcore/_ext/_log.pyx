# cython: language_level=3
"""The log engine: segment files, records, batch append and read, routing and checksums.

Composition root: the parts are included so that calls between them stay C calls.
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport (
    PyBUF_ANY_CONTIGUOUS,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_CheckExact
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_Check
from libc.errno cimport EDQUOT, EFBIG, EINTR, EIO, ENOSPC, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from fluxcore._ext.includes.fc cimport (
    REC_ALIGN,
    REC_HEADER_SIZE,
    SEG_HEADER_SIZE,
    SEG_INDEX_STRIDE,
    SEG_MAGIC,
    SEG_VERSION,
    crc32c_value,
    crc_init,
    crc_uses_hardware,
    rec_crc,
    rec_fill_crcs,
    rec_verify3,
    rec_header_t,
    rec_stride,
    seg_header_t,
    seg_index_entry_t,
    seg_load_u32,
    seg_load_u64,
    seg_now_ms,
    seg_store_u32,
    seg_store_u64,
    xxh64,
)
from posix.types cimport off_t

from fluxcore._ext.includes.sys cimport (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    MADV_DONTNEED,
    MAP_FAILED,
    MAP_SHARED,
    MS_SYNC,
    POSIX_FADV_DONTNEED,
    PROT_READ,
    PROT_WRITE,
    close,
    fallocate,
    fstat,
    madvise,
    mmap,
    msync,
    munmap,
    posix_fadvise,
    pthread_mutex_destroy,
    pthread_mutex_init,
    pthread_mutex_lock,
    pthread_mutex_trylock,
    pthread_mutex_unlock,
    iovec,
    pwritev,
    ssize_t,
    stat,
)

import bisect
import operator
import os

import numpy as np

from fluxcore.errors import (
    CorruptLogError,
    LogClosedError,
    LogError,
    LogFullError,
    RecordTooLargeError,
)

cnp.import_array()
crc_init()

include "consts.pxi"
include "args.pyx"
include "routing.pyx"
include "segment_file.pyx"
include "batch.pyx"
include "log_core.pyx"
