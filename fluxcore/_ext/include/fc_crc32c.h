/* CRC32C (Castagnoli), the checksum of every record.
 * x86-64 with SSE4.2: the crc32 instruction, 8 bytes per step; elsewhere: slicing-by-8 tables.
 * The choice is made once, at first use (crc_init), from cpuid. Values are the standard
 * CRC32C (init and final xor 0xFFFFFFFF), identical to the `crc32c` PyPI package. */
#ifndef FC_CRC32C_H
#define FC_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CRC_POLY_REFLECTED 0x82F63B78u

static uint32_t crc_table[8][256];
static int crc_hw = -1; /* -1: not probed yet */

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (CRC_POLY_REFLECTED & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* FLUXCORE_CRC_SOFTWARE=1 forces the table path, so the tests cover it on any CPU. */
    crc_hw = __builtin_cpu_supports("sse4.2") && !getenv("FLUXCORE_CRC_SOFTWARE") ? 1 : 0;
#else
    crc_hw = 0;
#endif
}

/* Raw update: `crc` is the running register (already inverted). */
static uint32_t crc_update_sw(uint32_t crc, const unsigned char *p, size_t n) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xFF] ^ crc_table[6][(w >> 8) & 0xFF] ^
              crc_table[5][(w >> 16) & 0xFF] ^ crc_table[4][(w >> 24) & 0xFF] ^
              crc_table[3][(w >> 32) & 0xFF] ^ crc_table[2][(w >> 40) & 0xFF] ^
              crc_table[1][(w >> 48) & 0xFF] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t crc_update_hw(uint32_t crc, const unsigned char *p,
                                                                size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

static inline uint32_t crc_update(uint32_t crc, const void *data, size_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (crc_hw == 1) return crc_update_hw(crc, (const unsigned char *)data, n);
#endif
    return crc_update_sw(crc, (const unsigned char *)data, n);
}

/* Standard CRC32C of a buffer, continuing from a previous standard value `prev` (0 to start). */
static inline uint32_t crc32c_value(uint32_t prev, const void *data, size_t n) {
    return ~crc_update(~prev, data, n);
}

static inline int crc_uses_hardware(void) { return crc_hw == 1; }

#endif
