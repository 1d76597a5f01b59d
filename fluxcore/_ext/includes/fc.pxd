# Declarations of the project's own C helpers (include/*.h). Nothing here is implemented.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "fc_crc32c.h" nogil:
    void crc_init()
    uint32_t crc32c_value(uint32_t prev, const void *data, size_t n)
    int crc_uses_hardware()


cdef extern from "fc_xxh64.h" nogil:
    uint64_t xxh64(const void *data, size_t length, uint64_t seed)


cdef extern from "fc_seg.h" nogil:
    const char *SEG_MAGIC
    unsigned int SEG_VERSION
    unsigned int SEG_HEADER_SIZE
    unsigned int SEG_INDEX_STRIDE
    unsigned int REC_HEADER_SIZE
    unsigned int REC_ALIGN
    uint32_t rec_crc(const char *rec, uint32_t length)
    void rec_fill_crcs(char *stage, size_t used)
    int rec_verify3(const char **r, int n)

    ctypedef struct seg_header_t:
        char magic[8]
        uint32_t version
        uint32_t header_size
        uint64_t file_size
        uint64_t first_index
        uint64_t data_offset
        uint64_t index_capacity
        uint64_t index_stride
        uint64_t created_ms
        uint64_t sealed_end
        uint64_t checkpoint_offset
        uint64_t checkpoint_index
        uint64_t committed_end
        uint64_t record_count

    ctypedef struct rec_header_t:
        uint32_t length
        uint32_t crc
        uint64_t index
        uint16_t segment
        uint16_t flags
        uint32_t reserved

    ctypedef struct seg_index_entry_t:
        uint64_t index
        uint64_t offset

    uint64_t rec_stride(uint64_t length)
    uint32_t seg_load_u32(const uint32_t *p)
    void seg_store_u32(uint32_t *p, uint32_t v)
    uint64_t seg_load_u64(const uint64_t *p)
    void seg_store_u64(uint64_t *p, uint64_t v)
    uint64_t seg_now_ms()


cdef extern from "fc_msg.h" nogil:
    unsigned int FRAME_HEADER_SIZE
    unsigned int MSG_HEADER_SIZE
    unsigned int MSG_VERSION
    unsigned int BATCH_HEADER_SIZE

    ctypedef struct frame_header_t:
        uint32_t length
        uint8_t op
        uint8_t flags
        uint16_t reserved
        uint32_t request_id

    ctypedef struct msg_header_t:
        uint8_t version
        uint8_t flags
        uint16_t type_len
        uint16_t message_id_len
        uint16_t source_len
        uint16_t target_len
        uint16_t format_len
        uint32_t revision
        uint32_t metadata_len
        uint32_t data_len
        int64_t timestamp
        int64_t request_id

    ctypedef struct batch_header_t:
        uint16_t segment_start
        uint16_t segment_end
        uint8_t caught_up
        uint64_t last_index
        uint32_t count
        uint32_t reserved2

    uint64_t msg_total_size(const msg_header_t *h)
