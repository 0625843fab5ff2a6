"""Image modification: Gaussian blur, colour correction and additive noise.

An image is a ``numpy`` array of shape ``(H, W)`` (grey) or ``(H, W, C)`` with
``C`` in 1 (grey), 3 (RGB) or 4 (RGBA), or a Pillow image in mode ``L``,
``LA``, ``RGB`` or ``RGBA``. Arithmetic is done in float64 on values scaled to
``[0, 1]`` (``uint8`` / 255, ``uint16`` / 65535; float images are taken to be
in ``[0, 1]`` already) and the result is returned in the input's type and
dtype, clipped to ``[0, 1]`` and rounded for integer dtypes. An alpha channel
is blurred with the colours but never recoloured or noised.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dmt_privacy.errors import ValidationError
from dmt_privacy.modify._base import _ROW_CHECKS, Modifier, check_number

__all__ = ["LUMA_WEIGHTS", "ColorCorrection", "GaussianBlur", "ImageNoise"]

#: ITU-R BT.601 luma weights, as Pillow and torchvision use for greyscale.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])

# RGB -> YIQ (FCC NTSC); hue rotates the (I, Q) plane, leaving luma Y unchanged.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)

_PIL_MODES = ("L", "LA", "RGB", "RGBA")


def _is_pil(value: Any) -> bool:
    cls = type(value)
    return cls.__module__.startswith("PIL.") and hasattr(value, "mode") and hasattr(value, "size")


def _is_image(value: Any) -> bool:
    if _is_pil(value):
        return True
    return isinstance(value, np.ndarray) and value.dtype != object and (
        value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (1, 3, 4)))


#: How far outside [0, 1] a float image may stray (float rounding of earlier steps).
_RANGE_SLACK = 1e-6
#: scikit-learn's estimator checks that feed a random float table (one grey image here).
_RANDOM_TABLE_CHECKS = (
    "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input",
    "check_positive_only_tag_during_fit", "check_pipeline_consistency",
    "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_general", "check_transformer_preserve_dtypes", "check_fit2d_1sample",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent",
    "check_fit_check_is_fitted", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance")


def _to_unit(image: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """Float64 ``(H, W, C)`` copy in [0, 1] and the function that restores the input's type."""
    if _is_pil(image):
        from PIL import Image

        if image.mode not in _PIL_MODES:
            raise ValidationError(
                f"Pillow image mode {image.mode!r} is not supported; convert it first, "
                f"e.g. image.convert('RGB') (supported: {', '.join(_PIL_MODES)})."
            )
        mode = image.mode
        array = np.asarray(image, dtype=np.float64) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]

        def to_pil(out: np.ndarray) -> Any:
            data = np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
            return Image.fromarray(data[:, :, 0] if data.shape[2] == 1 else data, mode=mode)

        return array, to_pil
    if not _is_image(image):
        shape = getattr(image, "shape", None)
        raise ValidationError(
            f"An image must be an (H, W) or (H, W, C) array with C in 1, 3, 4, or a Pillow "
            f"image; got {type(image).__name__} of shape {shape!r}."
        )
    dtype = image.dtype
    grey_2d = image.ndim == 2
    if dtype == np.bool_:
        raise ValidationError("A boolean image cannot be modified; convert it to uint8 first.")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.min != 0:
            raise ValidationError(
                f"Integer images must be unsigned (uint8, uint16), got dtype {dtype}."
            )
        scale = float(info.max)
        array = image.astype(np.float64) / scale

        def restore(out: np.ndarray) -> Any:
            data = np.rint(np.clip(out, 0.0, 1.0) * scale).astype(dtype)
            return data[:, :, 0] if grey_2d else data
    else:
        scale = 1.0
        array = image.astype(np.float64)

        def restore(out: np.ndarray) -> Any:
            data = np.clip(out, 0.0, 1.0).astype(dtype)
            return data[:, :, 0] if grey_2d else data
    if grey_2d:
        array = array[:, :, None]
    return array, restore


def _colour_channels(array: np.ndarray) -> int:
    """How many leading channels are colour (the rest, if any, is alpha)."""
    return {1: 1, 2: 1, 3: 3, 4: 3}[array.shape[2]]


class _ImageModifier(Modifier):
    _item_name = "an image (array or Pillow image)"

    def _is_item(self, value: Any) -> bool:
        return _is_image(value)

    def _check_values(self, item: Any) -> str | None:
        if _is_pil(item):
            return None if item.size[0] * item.size[1] else "the image has no pixels."
        if item.size == 0:
            return f"the image has no pixels (shape {item.shape})."
        if np.issubdtype(item.dtype, np.floating):
            if not np.isfinite(item).all():
                return "the image holds NaN or infinite values; fix them first."
            low, high = float(item.min()), float(item.max())
            if low < -_RANGE_SLACK or high > 1.0 + _RANGE_SLACK:
                # 0..255 floats were clipped white (helper-71); a rule for those alone let a
                # dark one, or one with a pixel below 0, through (helper-72)
                return (f"a float image holds values in [0, 1], and this one spans [{low:g}, "
                        f"{high:g}]: 0..255 values? Divide by 255, or pass uint8; else clip "
                        "it to [0, 1] first.")
        return None

    def _modify_item(self, item: Any, rng: np.random.Generator) -> Any:
        array, restore = _to_unit(item)
        return restore(self._modify_array(array, rng))

    def _expected_failed_checks(self) -> dict[str, str]:
        outside = ("its random table is one float image with values outside [0, 1], which "
                   "is refused (0..255 floats went white)")
        return {**super()._expected_failed_checks(),
                "check_estimators_dtypes": "signed integer images (int64) are refused",
                **dict.fromkeys(_RANDOM_TABLE_CHECKS, outside)}

    @abstractmethod
    def _modify_array(self, array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The modified image, float in [0, 1]."""


class GaussianBlur(_ImageModifier):
    """Gaussian blur of standard deviation ``sigma`` pixels (the strength; 0 is a copy).

    Uses ``scipy.ndimage.gaussian_filter`` over the two spatial axes, each
    channel on its own, with mirrored borders (``mode='reflect'``) and the
    kernel truncated at ``truncate`` standard deviations.
    """

    def __init__(self, sigma: float = 1.0, *, truncate: float = 4.0,
                 columns: Sequence[Any] | None = None) -> None:
        self.sigma = sigma
        self.truncate = truncate
        self.columns = columns

    def _check_params(self) -> None:
        check_number("sigma", self.sigma, low=0.0, high=1000.0,
                     hint="It is the blur's standard deviation in pixels.")
        check_number("truncate", self.truncate, low=0.0, low_open=True)

    def _modify_array(self, array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sigma = float(self.sigma)
        if sigma == 0.0:
            return array
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(array, sigma=(sigma, sigma, 0.0), mode="reflect",
                               truncate=float(self.truncate))

    def _expected_failed_checks(self) -> dict[str, str]:
        return {**super()._expected_failed_checks(),
                **dict.fromkeys(_ROW_CHECKS, "a 2-D array is one image: blurring mixes its rows")}


class ColorCorrection(_ImageModifier):
    """Brightness, contrast, saturation and hue, applied in that order, each a fixed amount.

    Parameters (defaults leave the image unchanged):

    brightness:
        Added to every colour channel, as a fraction of full scale, in [-1, 1]:
        each channel's mean moves by exactly ``brightness`` (before clipping).
    contrast:
        Factor >= 0 on the distance of each channel value from the image's mean
        luma (0 gives flat grey, 1 unchanged); the mean luma is kept.
    saturation:
        Factor >= 0 on the distance of each pixel from its own luma (0 gives
        grey, 1 unchanged); every pixel's luma is kept.
    hue:
        Rotation in degrees, in [-180, 180], of each pixel's chroma in the YIQ
        plane; luma is kept and chroma magnitude too.

    The steps are linear and clipping to [0, 1] is done once, at the end, so
    on images that do not clip the channel means move exactly as stated.
    Grey images take brightness and contrast only.
    """

    def __init__(self, *, brightness: float = 0.0, contrast: float = 1.0,
                 saturation: float = 1.0, hue: float = 0.0,
                 columns: Sequence[Any] | None = None) -> None:
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.columns = columns

    def _check_params(self) -> None:
        check_number("brightness", self.brightness, low=-1.0, high=1.0,
                     hint="It is an offset as a fraction of full scale; 0 leaves images as is.")
        check_number("contrast", self.contrast, low=0.0, high=100.0,
                     hint="It is a factor; 1 leaves images as is.")
        check_number("saturation", self.saturation, low=0.0, high=100.0,
                     hint="It is a factor; 1 leaves images as is.")
        check_number("hue", self.hue, low=-180.0, high=180.0,
                     hint="It is a rotation in degrees; 0 leaves images as is.")

    def matrix(self) -> np.ndarray:
        """The 3x3 linear map saturation-then-hue applies to an RGB column vector."""
        s = float(self.saturation)
        grey = np.outer(np.ones(3), LUMA_WEIGHTS)  # each row: the pixel's luma
        saturate = grey + s * (np.eye(3) - grey)
        theta = np.deg2rad(float(self.hue))
        rotate = np.array([[1.0, 0.0, 0.0],
                           [0.0, np.cos(theta), -np.sin(theta)],
                           [0.0, np.sin(theta), np.cos(theta)]])
        return _YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ @ saturate

    def _modify_array(self, array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = array.copy()
        c = _colour_channels(array)
        colour = out[:, :, :c]
        colour += float(self.brightness)
        if float(self.contrast) != 1.0:
            luma = colour @ LUMA_WEIGHTS if c == 3 else colour[:, :, 0]
            mean = float(luma.mean())
            colour[...] = mean + float(self.contrast) * (colour - mean)
        if c == 3 and (float(self.saturation) != 1.0 or float(self.hue) != 0.0):
            colour[...] = colour @ self.matrix().T
        return out


class ImageNoise(_ImageModifier):
    """Additive Gaussian noise of standard deviation ``std`` (fraction of full scale).

    ``std`` is the strength (0.05 is 5 % of the range, about 12.75 levels of a
    ``uint8`` image). Each colour channel of each pixel gets independent noise;
    alpha is left alone. Results are clipped to the valid range, which lowers
    the realized noise near black and white. Deterministic given ``random_state``.
    """

    def __init__(self, std: float = 0.05, *, columns: Sequence[Any] | None = None,
                 random_state: int | np.random.Generator | None = None) -> None:
        self.std = std
        self.columns = columns
        self.random_state = random_state

    def _check_params(self) -> None:
        check_number("std", self.std, low=0.0, high=1.0,
                     hint="It is the noise's standard deviation as a fraction of full scale.")

    def _modify_array(self, array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = array.copy()
        c = _colour_channels(array)
        out[:, :, :c] += rng.normal(0.0, float(self.std), size=out[:, :, :c].shape)
        return out

    def _expected_failed_checks(self) -> dict[str, str]:
        return {**super()._expected_failed_checks(),
                **dict.fromkeys(_ROW_CHECKS, "a 2-D array is one image: noise is drawn per image")}
