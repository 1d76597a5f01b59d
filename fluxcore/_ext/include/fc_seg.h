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
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "fc_crc32c.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14+; older kernels answer EINVAL */
#endif

#define SEG_MAGIC "FLUXSEG1"
#define SEG_VERSION 3u
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
    uint64_t record_count;      /* records below committed_end; stored just before it */
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

/* The checksum of a record: CRC32C of its length word, then of everything after the CRC field. */
static inline uint32_t rec_crc(const char *rec, uint32_t length) {
    return crc32c_value(crc32c_value(0, &length, 4), rec + 8, length - 8);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The checksums of three records at once. A crc32 instruction takes three cycles, but a new one
 * can start every cycle: three independent chains cost about what one does. */
__attribute__((target("sse4.2"))) static inline void rec_crc3_of_hw(
        const char *r0, const char *r1, const char *r2, uint32_t out[3]) {
    const char *r[3] = {r0, r1, r2};
    uint64_t c[3];
    size_t n[3];
    for (int k = 0; k < 3; k++) {
        uint32_t length;
        memcpy(&length, r[k], 4);
        c[k] = __builtin_ia32_crc32si(0xFFFFFFFFu, length);
        n[k] = length - 8;
    }
    size_t common = n[0] < n[1] ? n[0] : n[1];
    common = (common < n[2] ? common : n[2]) & ~(size_t)7;
    for (size_t i = 8; i < common + 8; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, r[0] + i, 8);
        memcpy(&w1, r[1] + i, 8);
        memcpy(&w2, r[2] + i, 8);
        c[0] = __builtin_ia32_crc32di(c[0], w0);
        c[1] = __builtin_ia32_crc32di(c[1], w1);
        c[2] = __builtin_ia32_crc32di(c[2], w2);
    }
    for (int k = 0; k < 3; k++)
        out[k] = ~crc_update_hw((uint32_t)c[k], (const unsigned char *)r[k] + 8 + common,
                                n[k] - common);
}

/* Writes the CRCs of three records. */
__attribute__((target("sse4.2"))) static void rec_crc3_hw(char *r[3]) {
    uint32_t crc[3];
    rec_crc3_of_hw(r[0], r[1], r[2], crc);
    for (int k = 0; k < 3; k++) memcpy(r[k] + 4, &crc[k], 4);
}

/* Checks the CRCs of three records whose lengths were bounds-checked; returns the position of
 * the first damaged one, or -1. Three at once, as when they are written: the chains overlap. */
__attribute__((target("sse4.2"))) static int rec_verify3_hw(const char **r) {
    uint32_t crc[3], stored;
    rec_crc3_of_hw(r[0], r[1], r[2], crc);
    for (int k = 0; k < 3; k++) {
        memcpy(&stored, r[k] + 4, 4);
        if (crc[k] != stored) return k;
    }
    return -1;
}
#endif

/* Checks the CRCs of n (1 to 3) records whose lengths were bounds-checked; returns the position
 * of the first damaged one, or -1. */
static int rec_verify3(const char **r, int n) {
    uint32_t length, stored;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (n == 3 && crc_uses_hardware()) return rec_verify3_hw(r);
#endif
    for (int k = 0; k < n; k++) {
        memcpy(&length, r[k], 4);
        memcpy(&stored, r[k] + 4, 4);
        if (rec_crc(r[k], length) != stored) return k;
    }
    return -1;
}

/* Fills in the CRC field of each record in [stage, stage + used): records back to back, each
 * padded to its stride, their CRC fields not yet set. */
static void rec_fill_crcs(char *stage, size_t used) {
    size_t pos = 0;
    uint32_t length, crc;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (crc_uses_hardware()) {
        char *group[3];
        int k = 0;
        for (; pos < used; pos += rec_stride(length)) {
            memcpy(&length, stage + pos, 4);
            group[k++] = stage + pos;
            if (k == 3) {
                rec_crc3_hw(group);
                k = 0;
            }
        }
        for (int j = 0; j < k; j++) {
            memcpy(&length, group[j], 4);
            crc = rec_crc(group[j], length);
            memcpy(group[j] + 4, &crc, 4);
        }
        return;
    }
#endif
    for (; pos < used; pos += rec_stride(length)) {
        memcpy(&length, stage + pos, 4);
        crc = rec_crc(stage + pos, length);
        memcpy(stage + pos + 4, &crc, 4);
    }
}

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
