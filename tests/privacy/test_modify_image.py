"""Image modifiers: measured blur, colour moves, noise level, types kept, inputs untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dmt_privacy.errors import ValidationError
from dmt_privacy.modify import ColorCorrection, GaussianBlur, ImageNoise
from dmt_privacy.modify.image import _RGB_TO_YIQ, LUMA_WEIGHTS


def high_frequency_energy(image: np.ndarray, cutoff: float = 0.25) -> float:
    """Spectral energy above ``cutoff`` cycles/pixel, summed over channels."""
    x = np.asarray(image, dtype=np.float64)
    x = x - x.mean(axis=(0, 1))
    spectrum = np.abs(np.fft.fft2(x, axes=(0, 1))) ** 2
    fy = np.fft.fftfreq(x.shape[0])[:, None]
    fx = np.fft.fftfreq(x.shape[1])[None, :]
    mask = np.hypot(fy, fx) > cutoff
    return float(spectrum[mask].sum())


@pytest.fixture
def noise_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)


@pytest.fixture
def mid_image() -> np.ndarray:
    """A smooth colourful float image in [0.38, 0.62]: no modifier below clips it."""
    y, x = np.mgrid[0:48, 0:64] / 64.0
    return np.stack([0.5 + 0.12 * np.sin(6 * x), 0.5 + 0.12 * np.cos(5 * y),
                     0.5 + 0.12 * np.sin(4 * (x + y))], axis=-1)


def test_blur_lowers_high_frequency_energy_monotonically(noise_image):
    energies = [high_frequency_energy(GaussianBlur(sigma).transform(noise_image))
                for sigma in (0.0, 0.5, 1.0, 2.0)]
    assert energies[0] == pytest.approx(high_frequency_energy(noise_image))
    assert energies[0] > energies[1] > energies[2] > energies[3]
    # A Gaussian of sigma 1 passes exp(-2 pi^2 f^2) of the amplitude: < 30 % at f = 0.25.
    assert energies[2] < 0.1 * energies[0]
    assert energies[3] < 1e-3 * energies[0]


def test_blur_keeps_mean_and_shape_and_type(noise_image):
    out = GaussianBlur(1.5).transform(noise_image)
    assert out.dtype == np.uint8 and out.shape == noise_image.shape
    assert abs(out.mean() - noise_image.mean()) < 1.0


def test_brightness_moves_each_channel_mean_by_the_stated_amount(mid_image):
    for amount in (-0.2, 0.1, 0.25):
        out = ColorCorrection(brightness=amount).transform(mid_image)
        moved = out.mean(axis=(0, 1)) - mid_image.mean(axis=(0, 1))
        np.testing.assert_allclose(moved, amount, atol=1e-12)
    as_uint8 = np.rint(mid_image * 255).astype(np.uint8)
    out = ColorCorrection(brightness=0.1).transform(as_uint8)
    moved = out.mean(axis=(0, 1)) - as_uint8.mean(axis=(0, 1))
    np.testing.assert_allclose(moved, 25.5, atol=0.51)  # rounding of each pixel


def test_contrast_scales_spread_about_the_mean_luma(mid_image):
    luma = mid_image @ LUMA_WEIGHTS
    for factor in (0.5, 1.5):
        out = ColorCorrection(contrast=factor).transform(mid_image)
        out_luma = out @ LUMA_WEIGHTS
        assert out_luma.mean() == pytest.approx(luma.mean(), abs=1e-12)
        assert out_luma.std() == pytest.approx(factor * luma.std(), rel=1e-9)
        np.testing.assert_allclose(out.mean(axis=(0, 1)) - luma.mean(),
                                   factor * (mid_image.mean(axis=(0, 1)) - luma.mean()),
                                   atol=1e-12)


def test_saturation_scales_chroma_and_keeps_luma(mid_image):
    luma = mid_image @ LUMA_WEIGHTS
    chroma = mid_image - luma[..., None]
    for factor in (0.0, 0.5, 1.3):
        out = ColorCorrection(saturation=factor).transform(mid_image)
        np.testing.assert_allclose(out @ LUMA_WEIGHTS, luma, atol=1e-12)
        np.testing.assert_allclose(out.mean(axis=(0, 1)) - luma.mean(),
                                   factor * chroma.mean(axis=(0, 1)), atol=1e-12)


def test_hue_rotates_mean_chroma_by_the_stated_angle(mid_image):
    yiq = mid_image.mean(axis=(0, 1)) @ _RGB_TO_YIQ.T
    for degrees in (-90.0, 30.0, 120.0):
        out = ColorCorrection(hue=degrees).transform(mid_image)
        out_yiq = out.mean(axis=(0, 1)) @ _RGB_TO_YIQ.T
        assert out_yiq[0] == pytest.approx(yiq[0], abs=1e-9)  # luma kept
        assert np.hypot(*out_yiq[1:]) == pytest.approx(np.hypot(*yiq[1:]), rel=1e-9)
        turned = np.degrees(np.arctan2(out_yiq[2], out_yiq[1]) - np.arctan2(yiq[2], yiq[1]))
        assert (turned - degrees + 180) % 360 - 180 == pytest.approx(0.0, abs=1e-6)
    back = ColorCorrection(hue=-40.0).transform(ColorCorrection(hue=40.0).transform(mid_image))
    np.testing.assert_allclose(back, mid_image, atol=1e-12)


def test_noise_has_the_stated_standard_deviation_and_is_seeded():
    grey = np.full((128, 128, 3), 128, dtype=np.uint8)
    out = ImageNoise(0.05, random_state=0).transform(grey)
    diff = (out.astype(float) - grey) / 255.0
    assert diff.std() == pytest.approx(0.05, rel=0.03)
    assert abs(diff.mean()) < 0.002
    assert np.array_equal(out, ImageNoise(0.05, random_state=0).transform(grey))
    assert not np.array_equal(out, ImageNoise(0.05, random_state=1).transform(grey))


def test_alpha_is_never_recoloured_or_noised():
    rgba = np.random.default_rng(1).integers(0, 256, size=(16, 16, 4), dtype=np.uint8)
    for modifier in (ImageNoise(0.2, random_state=0), ColorCorrection(brightness=0.3, hue=50)):
        out = modifier.transform(rgba)
        assert np.array_equal(out[..., 3], rgba[..., 3])
        assert not np.array_equal(out[..., :3], rgba[..., :3])


def test_pillow_images_in_pillow_images_out():
    array = np.random.default_rng(2).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    for mode in ("RGB", "L", "RGBA"):
        image = Image.fromarray(array).convert(mode)
        before = image.tobytes()
        for modifier in (GaussianBlur(1.0), ColorCorrection(brightness=-0.1, saturation=0.5),
                         ImageNoise(0.1, random_state=0)):
            out = modifier.transform(image)
            assert isinstance(out, Image.Image)
            assert out.mode == mode and out.size == image.size
            assert out.tobytes() != before
        assert image.tobytes() == before
    with pytest.raises(ValidationError, match="mode 'P'"):
        GaussianBlur(1.0).transform(Image.fromarray(array).convert("P"))


def test_grey_and_float_images_keep_their_shape_and_dtype():
    grey = np.random.default_rng(3).random((10, 12)).astype(np.float32)
    for modifier in (GaussianBlur(1.0), ColorCorrection(contrast=0.5, saturation=0.0),
                     ImageNoise(0.1, random_state=0)):
        out = modifier.transform(grey)
        assert out.shape == grey.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_collections_are_new_and_inputs_unchanged(noise_image):
    images = [noise_image, noise_image[:32]]
    copies = [i.copy() for i in images]
    out = ImageNoise(0.1, random_state=0).transform(images)
    assert isinstance(out, list) and len(out) == 2
    assert all(np.array_equal(a, b) for a, b in zip(images, copies, strict=True))
    frame = pd.DataFrame({"photo": pd.Series(images, dtype=object), "id": [1, 2]})
    f_out = GaussianBlur(1.0, columns=["photo"]).transform(frame)
    assert np.array_equal(frame["photo"][0], copies[0])
    assert f_out["photo"][1].shape == (32, 64, 3) and list(f_out["id"]) == [1, 2]


@pytest.mark.parametrize(("modifier", "words"), [
    (GaussianBlur(-1.0), ["sigma", "-1.0"]),
    (ColorCorrection(brightness=2), ["brightness", "2"]),
    (ColorCorrection(hue="red"), ["hue", "'red'"]),
    (ImageNoise(std=float("nan")), ["std", "nan"]),
])
def test_bad_parameters_name_parameter_and_value(modifier, words, noise_image):
    with pytest.raises(ValidationError) as info:
        modifier.transform(noise_image)
    for word in words:
        assert word in str(info.value)


def test_non_images_are_refused():
    with pytest.raises(ValidationError, match="image"):
        GaussianBlur(1.0).transform(np.zeros((4, 4, 7)))
    with pytest.raises(ValidationError, match="unsigned"):
        GaussianBlur(1.0).transform(np.zeros((4, 4), dtype=np.int16))


@pytest.mark.parametrize("image", [
    np.full((8, 8, 3), 128.0),  # 0..255 as floats
    np.random.default_rng(0).integers(0, 16, (8, 8, 3)).astype(float),  # a dark one
    np.r_[np.full((7, 8), 200.0), np.full((1, 8), -0.5)],  # one pixel below 0
])
def test_a_float_image_beyond_zero_to_one_is_refused_not_clipped_white(image):
    """A float image in 0..255 was taken to be in [0, 1]: every pixel went to 1.0 (helper-71);
    a rule that refused only images with no negative pixel and one above 16 let a dark
    image, or one with a pixel at -0.5, go white (helper-72)."""
    with pytest.raises(ValidationError, match=r"\[0, 1\].*255"):
        GaussianBlur(1.0).transform([image])
    assert GaussianBlur(1.0).transform([np.clip(image / 255.0, 0, 1)])[0].max() <= 1.0
