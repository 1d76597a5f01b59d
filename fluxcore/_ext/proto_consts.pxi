# Constants of the wire protocol used in C (docs/protocol.md; fluxcore/protocol.py has them all).
cdef enum:
    OP_APPEND = 2
    OP_BATCH = 131
    MSG_FLAG_ERROR = 1
