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
#: Fixed-size scalars: marker → bytes that follow.
_FIXED = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
#: Variable-length str / bin / ext: marker → bytes of the length field.
_STR_BIN = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}
_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}


def bounded_shape(data: bytes, *, max_depth: int = 6) -> bool:
    """Whether ``data`` is one msgpack object of bounded depth with honest lengths."""
    n = len(data)
    pos = 0
    stack = [1]  # elements still expected at each open level; the top expects one object
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        stack[-1] -= 1
        if pos >= n:
            return False
        b = data[pos]
        pos += 1
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            continue
        count = -1
        if 0x80 <= b <= 0x8F:
            count = 2 * (b & 0x0F)
        elif 0x90 <= b <= 0x9F:
            count = b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            pos += b & 0x1F
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _STR_BIN or b in _EXT:
            width = _STR_BIN.get(b) or _EXT[b]
            if pos + width > n:
                return False
            length = int.from_bytes(data[pos:pos + width], "big")
            pos += width
            if b in _EXT:
                if pos + 1 + length > n:
                    return False
                if data[pos] == _EXT_VALUE_SET and not _scalars(data[pos + 1:pos + 1 + length]):
                    return False
                pos += 1
            pos += length
        elif b in _FIXEXT:
            length = _FIXEXT[b]
            if pos + 1 + length > n:
                return False
            if data[pos] == _EXT_VALUE_SET and not _scalars(data[pos + 1:pos + 1 + length]):
                return False
            pos += 1 + length
        elif b in (0xDC, 0xDD, 0xDE, 0xDF):
            width = 2 if b in (0xDC, 0xDE) else 4
            if pos + width > n:
                return False
            count = int.from_bytes(data[pos:pos + width], "big")
            pos += width
            if b in (0xDE, 0xDF):
                count *= 2
        else:  # 0xc1: never used
            return False
        if pos > n:
            return False
        if count >= 0:
            if count > n - pos or len(stack) > max_depth:
                return False
            stack.append(count)
    return pos == n


def _scalars(payload: bytes) -> bool:
    """A value set's payload: one array of scalars (no container inside)."""
    return bool(payload) and bounded_shape(payload, max_depth=1) and _is_array(payload[0])


def _is_array(marker: int) -> bool:
    return 0x90 <= marker <= 0x9F or marker in (0xDC, 0xDD)
