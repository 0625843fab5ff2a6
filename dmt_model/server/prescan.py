"""A cheap walk over msgpack bytes before they are decoded: bounded depth, honest lengths.

msgpack's decoder allocates a list or dict of the length an array or map
header *declares* before reading a single element, so a few kilobytes of
nested headers that each declare thousands of elements cost tens of mebibytes
while they are being refused (issue 15.5: a 6 KB body, about 66 MiB).
:func:`bounded_shape` walks the bytes without building anything and refuses

- a container nested deeper than ``max_depth`` (a share package needs 6:
  package → receipt → DP receipt → field receipts → a field receipt → its
  bounds);
- a container that declares more elements than bytes remain (every element
  takes at least one byte), and a string, bin or ext longer than what remains;
- inside a value-set extension (ext type 2), anything but scalars;
- trailing bytes, and the byte 0xc1 (never used).

After it, decoding allocates at most about ``max_depth`` times the input's
length in list slots: memory is bounded by a small multiple of the body.
"""

from __future__ import annotations

__all__ = ["bounded_shape"]

_EXT_VALUE_SET = 2
_FIXMAP, _FIXARRAY, _VAR, _EXT, _FIXEXT, _BIG, _INVALID = -1, -2, -3, -4, -5, -6, -7


def _table() -> tuple[list[int], dict[int, int]]:
    """Per marker byte: bytes that follow a scalar (>= 0), or what kind of marker it is."""
    table = [_INVALID] * 256
    for b in range(0x00, 0x80):
        table[b] = 0  # positive fixint
    for b in range(0xE0, 0x100):
        table[b] = 0  # negative fixint
    for b in range(0x80, 0x90):
        table[b] = _FIXMAP
    for b in range(0x90, 0xA0):
        table[b] = _FIXARRAY
    for b in range(0xA0, 0xC0):
        table[b] = b & 0x1F  # fixstr
    for b, extra in {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2,
                     0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}.items():
        table[b] = extra
    width = {}
    for b, w in {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}.items():
        table[b], width[b] = _VAR, w
    for b, w in {0xC7: 1, 0xC8: 2, 0xC9: 4}.items():
        table[b], width[b] = _EXT, w
    for b, w in {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}.items():
        table[b], width[b] = _FIXEXT, w
    for b, w in {0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4}.items():
        table[b], width[b] = _BIG, w
    return table, width


_MARKERS, _WIDTH = _table()
#: Value-set payloads already checked, shared by every call (a schema's few generalized
#: categories repeat in every package); bounded like dmt_privacy.package's decode cache.
_CHECKED: dict[bytes, bool] = {}
_CHECKED_BYTES = 256
_CHECKED_MAX = 4096


def bounded_shape(data: bytes, *, max_depth: int = 6) -> bool:
    """Whether ``data`` is one msgpack object of bounded depth with honest lengths."""
    checked: dict[bytes, bool] = {}  # value sets repeat (one per class): check each once
    shared = _CHECKED
    markers, widths = _MARKERS, _WIDTH
    n = len(data)
    pos = 0
    stack: list[int] = []  # elements still expected by each enclosing container
    remaining = 1  # the top level holds one object
    while True:
        if remaining == 0:
            if not stack:
                break
            remaining = stack.pop()
            continue
        remaining -= 1
        if pos >= n:
            return False
        b = data[pos]
        pos += 1
        kind = markers[b]
        if kind >= 0:
            pos += kind
            continue
        if kind == _FIXARRAY:
            count = b & 0x0F
        elif kind == _FIXMAP:
            count = 2 * (b & 0x0F)
        elif kind == _INVALID:  # 0xc1: never used
            return False
        else:
            width = widths[b]
            if kind == _FIXEXT:
                length = width
            else:
                if pos + width > n:
                    return False
                length = int.from_bytes(data[pos:pos + width], "big")
                pos += width
            if kind == _VAR:
                pos += length
                continue
            if kind == _BIG:
                count = length * 2 if b in (0xDE, 0xDF) else length
            else:  # an extension: one type byte, then the payload
                if pos + 1 + length > n:
                    return False
                if data[pos] == _EXT_VALUE_SET:
                    payload = data[pos + 1:pos + 1 + length]
                    cache = shared if length <= _CHECKED_BYTES else checked
                    ok = cache.get(payload)
                    if ok is None:
                        ok = _scalars(payload)
                        if len(cache) >= _CHECKED_MAX:
                            cache.clear()
                        cache[payload] = ok
                    if not ok:
                        return False
                pos += 1 + length
                continue
        if count > n - pos or len(stack) >= max_depth:
            return False
        stack.append(remaining)
        remaining = count
    return pos == n


def _scalars(payload: bytes) -> bool:
    """A value set's payload: one array of scalars (no container inside)."""
    return bool(payload) and bounded_shape(payload, max_depth=1) and _is_array(payload[0])


def _is_array(marker: int) -> bool:
    return 0x90 <= marker <= 0x9F or marker in (0xDC, 0xDD)
