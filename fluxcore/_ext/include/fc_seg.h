/* On-disk layout of a segment file and of a record, plus the atomics that publish records.
 * Shared by the writer and by readers in other processes.
 *
 * Publication: the writer writes records (a batch with pwrite, a single record through the
 * mapping with its length word last), then stores committed_end with release ordering. Readers
 * load committed_end with acquire ordering and read only below it, so they never see a record
 * the kernel is still copying in. */
#ifndef FC_SEG_H
#define FC_SEG_H

#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14+; older kernels answer EINVAL */
#endif

#define SEG_MAGIC "FLUXSEG1"
#define SEG_VERSION 2u
#define SEG_HEADER_SIZE 4096u
#define SEG_INDEX_STRIDE 4096u /* one sparse-index entry per 4 KiB of records */
#define REC_HEADER_SIZE 24u
#define REC_ALIGN 8u

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t file_size;
    uint64_t first_index;
    uint64_t data_offset;     /* first record */
    uint64_t index_capacity;  /* sparse-index entries that fit between header and data */
    uint64_t index_stride;
    uint64_t created_ms;
    uint64_t sealed_end;      /* 0 while appendable; end of the last record once rolled past */
    uint64_t checkpoint_offset; /* records below this offset were verified and synced */
    uint64_t checkpoint_index;  /* index of the last record below checkpoint_offset (0: none) */
    uint64_t committed_end;     /* readers read records below this offset only (release store) */
} seg_header_t;

typedef struct {
    uint32_t length;   /* header + payload bytes; the commit word, stored last */
    uint32_t crc;      /* CRC32C of the length word, then bytes [8, length) */
    uint64_t index;
    uint16_t segment;
    uint16_t flags;
    uint32_t reserved;
} rec_header_t;

typedef struct {
    uint64_t index;   /* stored last: a nonzero index publishes the entry */
    uint64_t offset;
} seg_index_entry_t;

_Static_assert(sizeof(rec_header_t) == REC_HEADER_SIZE, "record header is 24 bytes");
_Static_assert(sizeof(seg_index_entry_t) == 16, "index entry is 16 bytes");

static inline uint64_t rec_stride(uint64_t length) { return (length + (REC_ALIGN - 1)) & ~(uint64_t)(REC_ALIGN - 1); }

static inline uint32_t seg_load_u32(const volatile uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void seg_store_u32(volatile uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t seg_load_u64(const volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void seg_store_u64(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Wall-clock milliseconds; the index is (ms << 16) | counter. */
static inline uint64_t seg_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#endif
