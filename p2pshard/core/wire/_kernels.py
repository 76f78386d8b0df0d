"""The tensor codec's compiled inner loops (numba; imported on first use, cached on disk).

Each gives, bit for bit, what the numpy code it replaced gave (the tests compare against copies
of that code): the payload bytes must not depend on which implementation encoded them. They run
every round on the training loop's critical path, over every element of a pseudo-gradient, where
numpy needs several passes and temporaries per step (50M values: top-k selection 90 -> 50 ms,
the INT2 fit 12 -> 5 ms).

:func:`select_chunks` -- chunked top-k. Per chunk, the ``k`` largest magnitudes as
``topk._topk_plain`` (a full argpartition) would choose them, or the chunk is marked *unsure* and
the caller selects it that way. It works on float32 bit patterns: with the sign bit cleared, a
magnitude's bits order like the magnitude, so every comparison is an integer one and NaN (bits
above ``0x7F800000``) shows as such. Per chunk:

1. magnitudes and the maxima of ``groups`` strided groups (column mod ``groups``);
2. a lower bound ``b`` on the k-th largest magnitude: the k-th largest group maximum (those are
   elements of the chunk), its low mantissa bits cleared (still a lower bound, a little looser,
   found in 12 steps instead of 31);
3. the candidates ``>= b``, in ascending offset order, at most ``cap`` (4k) of them;
4. the exact k-th largest candidate ``t``; the chunk is sure only if exactly ``k`` candidates are
   ``>= t`` (no tie at the threshold), and then those are its top k, the unique answer.

Unsure: a NaN, fewer than ``k`` or more than ``cap`` candidates, or a tie at the threshold.

:func:`fit_int2` -- INT2 levels with a least-squares scale per chunk (``quant._quantize_int2``),
summing in numpy's order: ``np.add.reduceat`` adds a segment's first element to the pairwise sum
(:func:`_pairwise`) of the rest.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_MAGNITUDE = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)  # magnitudes above this are NaN
_BOUND_LOWEST_BIT = 19  # the bound keeps the exponent and the top 4 mantissa bits


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def _kth_largest(bits, n, k, lowest):
    """The largest ``t`` (bits below ``lowest`` zero) with at least ``k`` of ``bits[:n]`` >= t:
    the k-th largest with its low bits cleared, decided one bit at a time from the top."""
    t = np.uint32(0)
    for b in range(30, lowest - 1, -1):
        trial = t | np.uint32(1 << b)
        count = 0
        for i in range(n):
            count += bits[i] >= trial
        if count >= k:
            t = trial
    return t


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def select_chunks(bits, chunk, k, groups, cap, offsets, values, unsure):
    """For each whole chunk of ``bits`` (float32 bit patterns, uint32): ``offsets[c*k:(c+1)*k]``
    (ascending) and ``values`` (bit patterns) of its k largest magnitudes, or ``unsure[c] = True``
    (also when more than ``cap`` candidates remain)."""
    n = bits.size // chunk
    per = chunk // groups
    words_end = chunk // 8 * 8
    mag = np.empty(chunk, np.uint32)
    mask = np.zeros(chunk, np.uint8)
    words = mask[:words_end].view(np.uint64)
    gmax = np.empty(groups, np.uint32)
    cand = np.empty(cap + 8, np.int64)  # a word's eight are written before the count is checked
    cand_mag = np.empty(cap + 8, np.uint32)
    for c in range(n):
        row = bits[c * chunk : (c + 1) * chunk]
        nan = 0
        for i in range(chunk):
            m = row[i] & _MAGNITUDE
            mag[i] = m
            nan += m > _INF_BITS
        if nan:
            unsure[c] = True
            continue
        for g in range(groups):
            gmax[g] = mag[g]
        for j in range(1, per):
            part = mag[j * groups : (j + 1) * groups]
            for g in range(groups):
                gmax[g] = max(gmax[g], part[g])
        bound = _kth_largest(gmax, groups, k, _BOUND_LOWEST_BIT)
        for i in range(chunk):
            mask[i] = mag[i] >= bound
        count = 0
        for w in range(words.size):  # eight offsets at a time, skipping words with no candidate
            if words[w] != 0:
                if count > cap:
                    break
                for i in range(w * 8, w * 8 + 8):
                    cand[count] = i
                    cand_mag[count] = mag[i]
                    count += mask[i]
        for i in range(words_end, chunk):
            if mask[i] and count <= cap:
                cand[count] = i
                cand_mag[count] = mag[i]
                count += 1
        if count < k or count > cap:
            unsure[c] = True
            continue
        threshold = _kth_largest(cand_mag, count, k, 0)
        above = 0
        for t in range(count):
            above += cand_mag[t] >= threshold
        if above != k:  # a tie at the threshold: the plain selection decides
            unsure[c] = True
            continue
        out = c * k
        for t in range(count):
            if cand_mag[t] >= threshold:
                offsets[out] = cand[t]
                values[out] = row[cand[t]]
                out += 1


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def _pairwise_block(a, lo, n):
    """numpy's pairwise sum of ``a[lo:lo+n]`` for n <= 128: 8 running sums, then the rest."""
    if n < 8:
        res = -0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def _pairwise(a, lo, n):
    """numpy's pairwise float64 sum of ``a[lo:lo+n]``: above 128 values, the sum of the halves
    (split at a multiple of 8). Iterative (numba cannot cache a recursive function): a stack of
    ranges still to split or to combine, and one of sums."""
    if n <= 128:
        return _pairwise_block(a, lo, n)
    los = np.empty(64, np.int64)
    ns = np.empty(64, np.int64)
    combine = np.zeros(64, np.bool_)
    sums = np.empty(64, np.float64)
    top, nsums = 1, 0
    los[0], ns[0] = lo, n
    while top:
        top -= 1
        start, size = los[top], ns[top]
        if combine[top]:
            combine[top] = False
            nsums -= 1
            sums[nsums - 1] = sums[nsums - 1] + sums[nsums]
        elif size <= 128:
            sums[nsums] = _pairwise_block(a, start, size)
            nsums += 1
        else:
            half = size // 2
            half -= half % 8
            combine[top] = True  # after both halves: left + right
            los[top + 1], ns[top + 1] = start + half, size - half  # popped second
            los[top + 2], ns[top + 2] = start, half  # popped first
            top += 3
    return sums[0]


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def _segment_sum(a, n):
    """``np.add.reduceat``'s sum of a segment ``a[:n]`` (n >= 1)."""
    if n == 1:
        return a[0]
    return a[0] + _pairwise(a, 1, n - 1)


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def _int2_level(y):
    """The nearest of -3, -1, 1, 3 (ties away from zero's side: 2 -> 3, 0 -> 1, -2 -> -1; NaN: -3)."""
    return 2.0 * ((y >= -2.0) + (y >= 0.0) + (y >= 2.0)) - 3.0


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)
def fit_int2(values, kept, levels, scales):
    """Per chunk (``kept[c]`` consecutive ``values``, float32): two Lloyd steps from absmax / 3
    for the scale (float64), then the levels (int8) at the float32 scale."""
    most = 1
    for c in range(kept.size):
        most = max(most, kept[c])
    v = np.empty(most, np.float64)
    qv = np.empty(most, np.float64)
    qq = np.empty(most, np.float64)
    start = 0
    for c in range(kept.size):
        n = kept[c]
        absmax = np.float32(0.0)
        for i in range(n):
            x = values[start + i]
            v[i] = x
            a = abs(x)
            if a > absmax or a != a:
                absmax = a
        s = np.float64(absmax / np.float32(3.0))
        for _ in range(2):
            d = s if s > 0 else 1.0
            for i in range(n):
                q = _int2_level(v[i] / d)
                qv[i] = q * v[i]
                qq[i] = q * q
            num = _segment_sum(qv, n)
            den = _segment_sum(qq, n)
            s = num / den if den > 0 else 0.0
        scale = np.float32(s)
        scales[c] = scale
        d = np.float64(scale) if scale > 0 else 1.0
        for i in range(n):
            levels[start + i] = np.int8(_int2_level(v[i] / d))
        start += n
