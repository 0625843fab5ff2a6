"""The input and output files of the commands: reading records, refusing to clobber."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dmt_privacy.errors import ValidationError

if TYPE_CHECKING:
    import pandas as pd

    from dmt_privacy.schema import Schema

__all__ = ["load_schema", "read_records", "read_text", "refuse_existing"]

#: What to say when a command needs a schema and none was given.
WRITE_A_SCHEMA = ("write one with 'dmt schema init DATA.csv -o schema.json' (roles and bounds "
                  "as flags; see 'dmt schema init --help')")


def read_records(path: str | Path, what: str, *, sep: str | None = None,
                 schema: Schema | None = None) -> pd.DataFrame:
    """A CSV file of records, its separator (comma, semicolon or tab) sniffed from its first
    line unless given; errors name the option ``what`` and the file.

    With ``schema``, each cell of an image field is the path of an image file, relative to
    the CSV's folder: a ``.npy`` array (height × width [× channels], as the camera gives
    it) or, with Pillow installed, a PNG or JPEG; it is replaced by its pixels.
    """
    import pandas as pd

    try:
        frame = (pd.read_csv(path, sep=sep) if sep else
                 pd.read_csv(path, sep=None, engine="python"))
    except FileNotFoundError:
        raise ValidationError(f"{what}: no file {path}.") from None
    except IsADirectoryError:
        raise ValidationError(f"{what}: {path} is a directory, not a CSV file.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{what}: {path} is not a readable CSV file ({exc}).") from None
    if frame.empty:
        raise ValidationError(f"{what}: {path} holds no records.")
    if schema is not None:
        for field in schema.by_kind("image"):
            if field.name in frame.columns:
                frame[field.name] = [_image(Path(path).parent, cell, field.name, what)
                                     for cell in frame[field.name]]
    return frame


def _image(folder: Path, cell: object, name: str, what: str) -> object:
    """The pixels of the image file a CSV cell names (see :func:`read_records`)."""
    import numpy as np

    if not isinstance(cell, str) or not cell:
        raise ValidationError(f"{what}: column {name!r} must hold image file paths, got "
                              f"{cell!r}.")
    file = folder / cell
    try:
        if file.suffix.lower() == ".npy":
            return np.load(file, allow_pickle=False)
        from PIL import Image

        with Image.open(file) as image:
            return np.asarray(image)
    except ImportError:
        raise ValidationError(f"{what}: {file} is not a .npy file, and reading other images "
                              "needs Pillow: pip install 'dmt-sdk[image]'.") from None
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{what}: column {name!r}: cannot read the image {file} "
                              f"({exc}).") from None


def refuse_existing(path: str | Path | None, force: bool, *, source: str | Path | None = None,
                    flag: str = "-o") -> None:
    """Refuse to replace an existing output file unless --force; never the input itself."""
    if path is None:
        return
    if source is not None and Path(path).resolve() == Path(source).resolve():
        raise ValidationError(f"{flag} {path} is the input file; write the result elsewhere.")
    if Path(path).exists() and not force:
        raise ValidationError(f"{flag} {path} already exists; pass --force to replace it.")


def read_text(path: str | Path, flag: str) -> str:
    """The text of the file ``flag`` names; errors name the flag and the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError(f"{flag}: no file {path}.") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{flag}: {path} is not a readable text file ({exc}).") from None


def load_schema(path: str | Path | None, *, flag: str = "--schema") -> Schema:
    """The schema JSON at ``path``; a missing ``path`` is refused with how to write one."""
    from dmt_privacy.schema import Schema

    if path is None:
        raise ValidationError(f"{flag} is required: {WRITE_A_SCHEMA}.")
    text = read_text(path, flag)
    try:
        return Schema.from_json(text)
    except ValueError as exc:  # SchemaError included
        raise ValidationError(f"{flag} {path}: {exc}") from None
