/*
 * sha256.h — SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104) for the agent's handshake.
 * Small and allocation-free; not tuned for bulk hashing (it only hashes handshake data).
 */
#ifndef BYPASS_SHA256_H
#define BYPASS_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define BP_SHA256_SIZE 32

typedef struct {
    uint32_t h[8];
    uint64_t total;        /* bytes hashed so far */
    uint8_t block[64];
    size_t used;           /* bytes waiting in block */
} bp_sha256;

void bp_sha256_init(bp_sha256 *c);
void bp_sha256_update(bp_sha256 *c, const void *data, size_t n);
void bp_sha256_final(bp_sha256 *c, uint8_t out[BP_SHA256_SIZE]);

/* HMAC over the concatenation of up to four pieces (NULL pieces are skipped). */
void bp_hmac_sha256(const void *key, size_t keylen,
                    const void *p1, size_t n1, const void *p2, size_t n2,
                    const void *p3, size_t n3, const void *p4, size_t n4,
                    uint8_t out[BP_SHA256_SIZE]);

#endif
