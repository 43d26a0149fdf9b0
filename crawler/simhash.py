"""The simhash of a page's visible words: 64 bits, similar pages near in Hamming distance.

Shingles of three words, each word hashed with blake2b (cached per worker),
mixed, and each of the 64 bits set by majority.  numpy does the bit counting
in one vectorised pass; this module is imported by the parse workers only,
so that a crawl's own process never loads numpy.
"""

from __future__ import annotations

import hashlib

import numpy as np

_EMPTY_SIMHASH = "0" * 16

_MASK64 = (1 << 64) - 1
_ROT_B = 21
_ROT_C = 42
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_U64_MIX1 = np.uint64(_MIX1)
_U64_MIX2 = np.uint64(_MIX2)

# Word hashes are the one expensive per-word step (a blake2b call each), and
# a crawl's vocabulary repeats heavily across pages, so a worker keeps them.
# Bounded (about 8 MB at the limit) by replacing the dict, never clearing it
# in place: a caller that already holds the old dict (another thread) keeps
# a consistent view.
_WORD_HASH_CACHE_MAX = 1 << 16


class _WordHashCache(dict):
    """word -> blake2b hash of the lower-cased word, filled on first lookup.

    ``__missing__`` lets ``map(cache.__getitem__, words)`` stay a C-level
    loop for every word already seen, with no separate "which are new" pass.
    """

    def __missing__(self, word: str) -> int:
        value = self[word] = _word_hash(word)
        return value


_word_hashes = _WordHashCache()

# Simhash bit counting packs eight one-bit counters into each byte of a
# uint64 lane; summing at most 255 values keeps each byte from carrying.
_LANE_SUM_MAX = 255
_LOW_BIT_OF_EACH_BYTE = np.uint64(0x0101010101010101)
_BIT_SHIFTS = np.arange(8, dtype=np.uint64)[:, None]

def _word_hash(word: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(word.lower().encode("utf-8"), digest_size=8).digest(), "little"
    )


def _rotl64(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & _MASK64


def _mix(a: int, b: int, c: int) -> int:
    """Shingle hash of three word hashes (scalar; used for < 3 words)."""
    z = (a ^ _rotl64(b, _ROT_B) ^ _rotl64(c, _ROT_C)) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _rotl64_array(x: np.ndarray, k: int) -> np.ndarray:
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


def _mix_arrays(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_mix`; uint64 array arithmetic wraps mod 2**64."""
    z = a ^ _rotl64_array(b, _ROT_B) ^ _rotl64_array(c, _ROT_C)
    z = (z ^ (z >> np.uint64(30))) * _U64_MIX1
    z = (z ^ (z >> np.uint64(27))) * _U64_MIX2
    return z ^ (z >> np.uint64(31))


def _word_hash_array(words: list[str]) -> np.ndarray:
    global _word_hashes
    cache = _word_hashes
    if len(cache) > _WORD_HASH_CACHE_MAX:
        cache = _word_hashes = _WordHashCache()
    return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def _bit_counts(values: np.ndarray) -> np.ndarray:
    """For each bit b in 0..63, how many of ``values`` have bit b set.

    Equivalent to unpacking every value into 64 bits and summing the
    columns, but about six times faster: shifting by k and masking the low
    bit of each byte leaves bit 8*j + k in byte j, so one uint64 addition
    advances eight counters at once.
    """
    padding = (-len(values)) % _LANE_SUM_MAX
    if padding:  # zeros set no bits, so they do not disturb the counts
        values = np.concatenate([values, np.zeros(padding, dtype=np.uint64)])
    lanes = (values[None, :] >> _BIT_SHIFTS) & _LOW_BIT_OF_EACH_BYTE
    lane_sums = lanes.reshape(8, -1, _LANE_SUM_MAX).sum(axis=2, dtype=np.uint64)
    # Little-endian bytes: byte j of a lane sum is the counter of bit 8*j + k.
    per_shift_byte = (
        lane_sums.astype("<u8", copy=False)
        .view(np.uint8)
        .reshape(8, -1, 8)
        .sum(axis=1, dtype=np.int64)
    )
    return per_shift_byte.T.ravel()


def simhash_words(words: list[str]) -> str:
    """64-bit simhash of the 3-word shingles of ``words``, as 16 hex digits.

    ``words`` are the raw ``\\w+`` matches of the visible text; they are
    lower-cased here, per word, exactly as the contract specifies.
    """
    if not words:
        return _EMPTY_SIMHASH
    hashes = _word_hash_array(words)
    if len(words) < 3:
        padded = [int(h) for h in hashes] + [0] * (3 - len(words))
        return format(_mix(*padded), "016x")
    shingles = _mix_arrays(hashes[:-2], hashes[1:-1], hashes[2:])
    # V[b] = set - unset = 2*set - n; the bit is on iff V[b] > 0.
    majority = 2 * _bit_counts(shingles) > len(shingles)
    value = np.packbits(majority, bitorder="little").view("<u8")[0]
    return format(int(value), "016x")
