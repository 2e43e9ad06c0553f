#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""How evenly the registry's hash spreads id-shaped keys over its shards' buckets.

A model of detail::key_table as the registry uses it: key k is hashed (boost::hash of an
integer is the integer, then key_table's mix), its shard is bits 52..63 of the hash masked to
the shard count, its bucket the bits right below the top 12 (bucket_of), and each shard's table
starts at 16 buckets and doubles when it holds half as many keys (no pre-sizing: max_pools below
1,024 keys a shard). For each key set it prints the extra nodes a hit visits on average (a key
k-th in its chain costs k - 1 visits before it; 0 = every key first in its bucket) and the
longest chain, for the current mix and for the ones it replaced. docs/benchmarks.md, Session 18.

    python3 bench/profile/hash_spread.py [keys] [shards]     (default 10000 64)
"""
import collections
import random
import sys

M64 = (1 << 64) - 1
PHI = 0x9E3779B97F4A7C15


def folded_multiply(k):  # key_table::mix since session 18 (with a 128-bit type)
    p = k * PHI
    return ((p >> 64) ^ p) & M64


def fibonacci_folded_first(k):  # session 18's first version
    x = k ^ (k >> 32)
    return (x * PHI) & M64


def murmur3_fmix64(k):  # until session 18
    h = k
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    h ^= h >> 33
    return h


def spread(keys, mix, shards):
    tables = collections.defaultdict(list)
    for k in keys:
        h = mix(k)
        tables[(h >> 52) & (shards - 1)].append(h)
    extra = longest = total = 0
    for hs in tables.values():
        buckets = 16
        while len(hs) >= buckets // 2:
            buckets *= 2
        log2 = buckets.bit_length() - 1
        chains = collections.Counter(((h << 12) & M64) >> (64 - log2) for h in hs)
        for n in chains.values():
            extra += n * (n - 1) // 2
            longest = max(longest, n)
        total += len(hs)
    return extra / total, longest


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    shards = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    rng = random.Random(1)
    sets = [("consecutive", list(range(n))), ("random 64-bit", [rng.getrandbits(64) for _ in range(n)])]
    sets += [(f"k << {m}", [k << m for k in range(1, n + 1)]) for m in range(1, 51)]
    for stride in (3, 5, 7, 10, 100, 1000, 4097, 12345, 65537, 999983, (1 << 16) | 1, (1 << 32) + 1):
        sets.append((f"k * {stride}", [(k * stride) & M64 for k in range(1, n + 1)]))
    mixes = [("folded multiply", folded_multiply), ("fibonacci, halves folded first", fibonacci_folded_first),
             ("murmur3 fmix64", murmur3_fmix64)]
    print(f"{n} keys, {shards} shards: extra node visits per hit (longest chain)")
    print(f"{'key set':<16}" + "".join(f"{name:>34}" for name, _ in mixes))
    worst = {name: (0.0, "") for name, _ in mixes}
    for label, keys in sets:
        row = f"{label:<16}"
        for name, mix in mixes:
            e, longest = spread(keys, mix, shards)
            row += f"{e:>27.3f} ({longest:>3})"
            if e > worst[name][0]:
                worst[name] = (e, label)
        print(row)
    print("worst: " + "; ".join(f"{name} {e:.3f} ({label})" for name, (e, label) in worst.items()))


if __name__ == "__main__":
    main()
