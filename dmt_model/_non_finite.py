"""Refusing a model whose predictions are NaN or infinite, or far outside what the target can
be, naming the model and the record.

Devices (:mod:`dmt_model.personalize`) and the server (:mod:`dmt_model.server.training`,
:class:`~dmt_model.server.retrain.ModelRegistry`) write a model's predictions into targets,
weights and published versions; a model whose weights diverged would put NaN there, or
numbers like 1e11 where the target's bounds are [0, 2500], and the error would surface later
as bad records or a broken version (the records' own check, which refuses a value more than
the bounds' width outside them as corrupt, blamed the user's record). Each checks the
predictions first, here, so the message names the model, the value and the record, and says
what to do. How far outside the bounds is too far is the caller's ``slack``: devices refuse
a model at ten widths (``dmt_model.personalize._DIVERGED_SLACK``), not at one, since a
foundation trained on little proxy data extrapolates past one on a user's ordinary record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from dmt_privacy.errors import ModelFileError
from dmt_privacy.schema import row_label

__all__ = ["refuse_non_finite"]


def refuse_non_finite(predict: Callable[[pd.DataFrame], np.ndarray],
                      frames: Sequence[pd.DataFrame | None], *, name: str, explanation: str,
                      sources: Sequence[str | None] | None = None,
                      predicted: np.ndarray | None = None, what: str = "record",
                      target_bounds: tuple[str, float, float] | None = None,
                      slack: float = 1.0) -> None:
    """Raise :class:`~dmt_privacy.errors.ModelFileError` if a prediction for a record of
    ``frames`` (``None`` and empty entries skipped) is NaN or infinite, or, with
    ``target_bounds`` (the target's name and bounds, for a model predicting one number),
    more than ``slack`` times the bounds' width outside them (a prediction written into a
    record is clipped to the bounds first, so none this lets through is refused there).

    ``predict`` makes the predictions of all frames at once (one per record, or a row of
    class probabilities); ``predicted`` are they, if already made (one frame). The message
    reads "``source``: ``name`` predicts ``value`` for the ``what`` at row ``row``:
    ``explanation``", the first such record's; ``sources`` labels each frame (``None``: no
    label), ``name`` is the model and ``explanation`` why that is refused and what to do.
    """
    parts = [(frame, source) for frame, source in zip(
        frames, sources if sources is not None else [None] * len(frames), strict=True)
        if frame is not None and len(frame)]
    if not parts:
        return
    whole = parts[0][0] if len(parts) == 1 else pd.concat([frame for frame, _ in parts])
    if predicted is None:
        predicted = predict(whole)
    values = np.asarray(predicted, dtype=np.float64).reshape(len(whole), -1)
    finite = np.isfinite(values).all(axis=1)
    beyond = ""
    if not finite.all():  # name a record it overflows on before one it is merely far off on
        at = int((~finite).argmax())
    elif target_bounds is not None and values.shape[1] == 1:
        target, low, high = target_bounds
        margin = slack * (high - low)
        outside = (values[:, 0] < low - margin) | (values[:, 0] > high + margin)
        if not outside.any():
            return
        at = int(outside.argmax())
        beyond = (f", more than {slack:g}× the width of {target}'s bounds [{low:g}, {high:g}] "
                  "outside them")
    else:
        return
    shown = str(float(values[at, 0])) if values.shape[1] == 1 else \
        "class probabilities that are NaN or infinite"
    source = [s for frame, s in parts for _ in range(len(frame))][at]
    row = row_label(whole.index[at])
    raise ModelFileError(("" if source is None else f"{source}: ")
                         + f"{name} predicts {shown} for the {what} at row {row!r}{beyond}: "
                         f"{explanation}")


