/* Wire layouts of the service (docs/protocol.md): the frame header and the message header. */
#ifndef FC_MSG_H
#define FC_MSG_H

#include <stdint.h>

#define FRAME_HEADER_SIZE 12u /* u32 length, u8 op, u8 flags, u16 reserved, u32 request_id */
#define MSG_HEADER_SIZE 40u
#define MSG_VERSION 1u
#define BATCH_HEADER_SIZE 24u

#pragma pack(push, 1)
typedef struct {
    uint32_t length; /* bytes after this field */
    uint8_t op;
    uint8_t flags;
    uint16_t reserved;
    uint32_t request_id;
} frame_header_t;

typedef struct {
    uint8_t version;
    uint8_t flags;
    uint16_t type_len;
    uint16_t message_id_len;
    uint16_t source_len;
    uint16_t target_len;
    uint16_t format_len;
    uint32_t revision;
    uint32_t metadata_len;
    uint32_t data_len;
    int64_t timestamp;
    int64_t request_id;
} msg_header_t;

typedef struct {
    uint16_t segment_start;
    uint16_t segment_end;
    uint8_t caught_up;
    uint8_t reserved[3];
    uint64_t last_index;
    uint32_t count;
    uint32_t reserved2;
} batch_header_t;
#pragma pack(pop)

_Static_assert(sizeof(frame_header_t) == FRAME_HEADER_SIZE, "frame header is 12 bytes");
_Static_assert(sizeof(msg_header_t) == MSG_HEADER_SIZE, "message header is 40 bytes");
_Static_assert(sizeof(batch_header_t) == BATCH_HEADER_SIZE, "batch header is 24 bytes");

/* Size a message header says its message has. */
static inline uint64_t msg_total_size(const msg_header_t *h) {
    return (uint64_t)MSG_HEADER_SIZE + h->type_len + h->message_id_len + h->source_len +
           h->target_len + h->format_len + (uint64_t)h->metadata_len + (uint64_t)h->data_len;
}

#endif
