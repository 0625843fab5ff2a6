"""Random sources for local DP: the OS CSPRNG read in bulk, and a seeded source that is NOT secure.

Every mechanism of :mod:`dmt_privacy.dp` draws 64-bit words from a
:class:`RandomSource` and turns them into samples with vectorized integer and
float64 arithmetic. The default, :class:`SystemSource`, reads
``os.urandom`` (the kernel CSPRNG) in one call per draw, so a release of a
million values costs a handful of system calls, not a million.

:class:`SeededInsecureSource` exists for reproducible tests only: numpy's
PCG64 is predictable from its output, so noise drawn from it protects nothing.
Asking for it (``random_state=<int>``) emits :class:`InsecureRandomnessWarning`
and every receipt records ``secure_random=False``.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import numpy.typing as npt

from dmt_privacy.errors import warn_caller

__all__ = [
    "InsecureRandomnessWarning",
    "RandomSource",
    "SeededInsecureSource",
    "SystemSource",
    "numpy_generator",
    "resolve_source",
]

_MASK52 = np.uint64((1 << 52) - 1)
_LN2 = math.log(2.0)
# Leading zeros of an 11-bit number (11 for zero).
_CLZ11 = np.array([11 - x.bit_length() for x in range(2048)], dtype=np.int64)
# Extra 11-bit exponent rounds when the first 11 bits are all zero: U is
# resolved with relative precision 2**-52 down to 2**-(11 * (1 + 24)) = 2**-275.
_MAX_EXTRA_ROUNDS = 24
#: About how many words :meth:`RandomSource.log_uniform_rows` draws and scans at once: its
#: calls stay few for small rows, and its memory and rescans bounded for long ones.
_ROW_BLOCK_WORDS = 4096


class InsecureRandomnessWarning(UserWarning):
    """Noise is being drawn from a seeded, predictable generator: for tests only."""


class RandomSource(ABC):
    """Uniform 64-bit words, and the derived draws every mechanism uses."""

    #: Whether the words come from a cryptographically secure generator.
    secure: bool = False
    #: How the source is described in receipts.
    name: str = "abstract"

    @abstractmethod
    def words(self, n: int) -> npt.NDArray[np.uint64]:
        """``n`` independent uniform 64-bit words."""

    # --- derived draws --------------------------------------------------------
    def uniform(self, n: int) -> npt.NDArray[np.float64]:
        """``n`` uniforms on ``[0, 1)`` with 53 random bits each."""
        return (self.words(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def log_uniform_and_bit(
        self, n: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """``log(U)`` for ``U`` uniform on ``(0, 1)``, with relative precision, and a fair bit.

        A 64-bit word ``w`` is split into 52 mantissa bits, one spare bit (returned,
        independent of ``U``) and 11 exponent bits. The number of leading zeros
        ``z`` of the exponent bits (continued with fresh words while they are all
        zero) picks the dyadic interval ``[2**-(z+1), 2**-z)`` with probability
        ``2**-(z+1)``; the mantissa places ``U`` uniformly inside it. So ``U`` has
        relative precision ``2**-52`` all the way down to ``2**-275``, which is
        what inverse-CDF sampling of geometric tails needs; a plain ``k / 2**53``
        uniform has only absolute precision ``2**-53`` and cuts the tails off.
        ``log(U)`` is computed as ``log1p(mantissa) - (z + 1) * log(2)``, which
        neither underflows nor loses the tail.
        """
        w = self.words(n)
        bit = ((w >> np.uint64(52)) & np.uint64(1)).astype(bool)
        return _log_uniform(w, self.words), bit

    def log_uniform_rows(self, rows: int, n: int) -> npt.NDArray[np.float64]:
        """``rows`` successive draws of :meth:`log_uniform_and_bit` (``n`` each, ``log U``
        only) as one ``(rows, n)`` array: the same words read in the same order, in a few
        numpy calls rather than a dozen a row.

        The rows are drawn in blocks of about :data:`_ROW_BLOCK_WORDS` words (one row a
        block when a row is longer). A word whose exponent bits are all zero (about one in
        2,048) continues with fresh words before the next row's: a block's rows up to it
        are computed together, that row on its own, and the rest from the words after
        those it took.
        """
        out = np.empty((rows, n), dtype=np.float64)
        if rows == 0 or n == 0:
            return out
        unread = np.zeros(0, dtype=np.uint64)  # words drawn, not yet read

        def more(k: int) -> npt.NDArray[np.uint64]:
            nonlocal unread
            taken, unread = unread[:k], unread[k:]
            return taken if taken.size == k else np.concatenate(
                [taken, self.words(k - taken.size)])

        block = max(1, _ROW_BLOCK_WORDS // n)
        done = 0
        while done < rows:
            w = more(min(rows - done, block) * n).reshape(-1, n)
            continues = np.flatnonzero(((w >> np.uint64(53)) == 0).any(axis=1))
            stop = int(continues[0]) if continues.size else len(w)
            out[done:done + stop] = _log_uniform(w[:stop].ravel(), self.words).reshape(stop, n)
            if stop < len(w):  # (the block's later rows are read again, after its extras)
                unread = np.concatenate([w[stop + 1:].ravel(), unread])
                out[done + stop] = _log_uniform(w[stop], more)
                stop += 1
            done += stop
        return out


def _log_uniform(w: npt.NDArray[np.uint64], more: Any) -> npt.NDArray[np.float64]:
    """``log U`` of each word (:meth:`RandomSource.log_uniform_and_bit`); ``more(k)`` gives the
    ``k`` fresh words that continue the words whose exponent bits are all zero, in order."""
    mantissa = (w & _MASK52).astype(np.float64)
    top = (w >> np.uint64(53)).astype(np.intp)
    zeros = _CLZ11[top]
    pending = np.flatnonzero(top == 0)
    for _ in range(_MAX_EXTRA_ROUNDS):
        if pending.size == 0:
            break
        extra = (more(pending.size) >> np.uint64(53)).astype(np.intp)
        zeros[pending] += _CLZ11[extra]
        pending = pending[extra == 0]
    return np.log1p((mantissa + 0.5) * 2.0**-52) - (zeros + 1) * _LN2


class SystemSource(RandomSource):
    """The operating system's CSPRNG (``os.urandom``), read in bulk."""

    secure = True
    name = "os.urandom"

    def words(self, n: int) -> npt.NDArray[np.uint64]:
        if n <= 0:
            return np.zeros(0, dtype=np.uint64)
        return np.frombuffer(os.urandom(8 * n), dtype="<u8").astype(np.uint64, copy=False)

    def __repr__(self) -> str:
        return "SystemSource()"


class SeededInsecureSource(RandomSource):
    """numpy PCG64 seeded with an integer. NOT SECURE: for reproducible tests only.

    Anyone who sees some outputs can predict the rest of the stream, and so
    subtract the noise. Never use it for data that leaves a device.
    """

    secure = False

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.name = f"numpy.PCG64(seed={self.seed}) NOT SECURE"
        self._bits = np.random.PCG64(self.seed)

    def words(self, n: int) -> npt.NDArray[np.uint64]:
        if n <= 0:
            return np.zeros(0, dtype=np.uint64)
        return np.asarray(self._bits.random_raw(n), dtype=np.uint64)

    def __repr__(self) -> str:
        return f"SeededInsecureSource({self.seed})"


def resolve_source(random_state: Any) -> RandomSource:
    """The source for a ``random_state`` argument.

    ``None`` (the default everywhere) gives the secure :class:`SystemSource`. An
    integer gives a :class:`SeededInsecureSource` and warns. A
    :class:`RandomSource` is used as given.
    """
    if random_state is None:
        return SystemSource()
    if isinstance(random_state, RandomSource):
        return random_state
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        warn_caller(
            f"random_state={int(random_state)} draws DP noise from a seeded numpy generator, "
            "which is NOT cryptographically secure: use it in tests only, never for data "
            "that leaves a device (leave random_state=None).",
            InsecureRandomnessWarning,
        )
        return SeededInsecureSource(int(random_state))
    raise TypeError(
        f"random_state must be None (secure, the default), an int seed (NOT secure, "
        f"for tests) or a RandomSource; got {random_state!r}."
    )


def numpy_generator(random_state: Any = None) -> np.random.Generator:
    """A numpy ``Generator`` for a ``random_state`` argument of the modifiers.

    ``None`` (the default) gives ChaCha20 (randomgen's ``ChaCha``, 20 rounds), a
    cryptographically secure stream keyed with 256 bits of ``os.urandom``: an image's,
    clip's or text's modification shows draws of it (a silent lead-in shows the raw
    noise), and from PCG64's outputs its state, and so every other draw of the call,
    can be recovered. An integer gives ``numpy.random.default_rng``'s PCG64 (reproducible,
    NOT secure: for tests and studies); a ``Generator`` is used as given.
    """
    if random_state is not None:
        return np.random.default_rng(random_state)
    from randomgen import ChaCha

    key = int.from_bytes(os.urandom(32), "little")
    return np.random.Generator(ChaCha(key=key, rounds=20))
