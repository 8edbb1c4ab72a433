"""nginx's split_clients arithmetic, bit for bit (ngx_murmurhash.c, ngx_http_split_clients_module.c). Pure."""

from __future__ import annotations

MASK = 0xFFFFFFFF
M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """ngx_murmur_hash2: 32-bit MurmurHash2 with the length as the seed."""
    length = len(data)
    h = length & MASK
    full = length - (length & 3)
    for i in range(0, full, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * M) & MASK
        k ^= k >> 24
        k = (k * M) & MASK
        h = (h * M) & MASK
        h ^= k
    tail = length & 3
    if tail:
        if tail == 3:
            h ^= data[full + 2] << 16
        if tail >= 2:
            h ^= data[full + 1] << 8
        h ^= data[full]
        h = (h * M) & MASK
    h ^= h >> 13
    h = (h * M) & MASK
    h ^= h >> 15
    return h


def v2_bound(hundredths: int) -> int:
    """The first hash that is no longer v2's when v2 is the first split_clients part."""
    return hundredths * MASK // 10000


def in_v2_bucket(key: bytes, hundredths: int) -> bool:
    """What `split_clients "$key" { P% v2; * v1; }` decides for this key."""
    return murmur2(key) < v2_bound(hundredths)
