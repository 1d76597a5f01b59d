# Constants of the log engine (no code).
cdef enum:
    PAGE = 4096
    SEGMENTS = 128
    FSYNC_NEVER = 0
    FSYNC_INTERVAL = 1
    FSYNC_ALWAYS = 2
    MIN_SEGMENT_FILE_SIZE = 1 << 20
    STAGE_SIZE = 1 << 20  # a batch is built here and written a stage per pwrite
    TRIM_STEP = 1 << 20   # page cache beyond the window that is dropped in one go
    MAPPED_RECORD_MAX = 1 << 16  # a batch of one record up to this size: through the mapping
