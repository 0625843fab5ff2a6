"""Where the modifiers' randomness comes from (helper-71's review, 5 December).

The modifiers drew their noise and choices from numpy's PCG64, seeded from the OS per call:
not a cryptographically secure generator. A modified item shows raw draws (a clip's silent
lead-in under AudioNoise is the noise itself), PCG64's state can be recovered from its
outputs, and with it every other draw of the call, so the noise could be subtracted from the
rest of the item. By default they now draw from ChaCha20 keyed from ``os.urandom``; a seed
still gives numpy's reproducible generator (for tests and studies, not for sharing).
"""

from __future__ import annotations

import numpy as np
import pytest

from dmt_privacy.dp.random import numpy_generator
from dmt_privacy.modify import AudioNoise, ImageNoise, SynonymReplacer


def _spy(monkeypatch, cls, method):
    seen = []
    original = getattr(cls, method)

    def spy(self, *args):
        seen.append(next(a for a in args if isinstance(a, np.random.Generator)).bit_generator)
        return original(self, *args)

    monkeypatch.setattr(cls, method, spy)
    return seen


@pytest.mark.parametrize(("modifier", "method", "item"), [
    (AudioNoise(snr_db=20.0), "_modify_item",
     np.r_[np.zeros(100), np.sin(np.arange(900) / 5.0)].astype(np.float32)),
    (ImageNoise(0.05), "_modify_item", np.full((8, 8), 0.5)),
    (SynonymReplacer(1.0), "_modify_text", "the quick brown fox jumps over the lazy dog"),
])
def test_every_modifier_draws_from_chacha20_keyed_by_the_os_unless_seeded(
        monkeypatch, modifier, method, item):
    seen = _spy(monkeypatch, type(modifier), method)
    first, second = modifier.transform([item]), modifier.transform([item])
    state = seen[-1].state
    assert state["bit_generator"].endswith("ChaCha") and state["state"]["rounds"] == 20
    assert seen[0].state["state"]["keysetup"].tolist() != state["state"]["keysetup"].tolist()
    if not isinstance(item, str):
        assert not np.array_equal(first[0], second[0])
    seeded = modifier.set_params(random_state=7)
    assert np.array_equal(np.asarray(seeded.transform([item])[0], dtype=object),
                          np.asarray(seeded.transform([item])[0], dtype=object))
    assert type(seen[-1]).__name__ == "PCG64"


def test_the_key_is_256_bits_of_os_urandom(monkeypatch):
    import os

    asked = []
    real = os.urandom

    def urandom(n):
        asked.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", urandom)
    generator = numpy_generator()
    assert asked == [32]
    assert isinstance(generator, np.random.Generator)
    assert numpy_generator(3).random() == np.random.default_rng(3).random()
