"""``dmt train``, ``dmt export`` and ``dmt personalize``: the loop, one step at a time."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dmt_model.cli._files import load_schema, read_records, refuse_existing
from dmt_model.cli._progress import progress
from dmt_privacy.errors import ModelFileError, ValidationError

if TYPE_CHECKING:
    import pandas as pd

    from dmt_model.foundation import Foundation

__all__ = ["register"]


def _named(what: str, error: ValidationError) -> ValidationError:
    return ValidationError(f"{what}: {error}")


def run_train(args: argparse.Namespace) -> int:
    from dmt_model.foundation import TrainingConfig, train_foundation

    refuse_existing(args.output, args.force)
    if args.data is None:
        raise ValidationError("--data is required: the CSV of proxy records to train on, with "
                              "--schema describing it ('dmt demo' trains on the bundled "
                              "Boston data).")
    schema = load_schema(args.schema)
    if schema.target is None:
        raise ValidationError(f"--schema {args.schema} has no target field: give one the "
                              "'target' role ('dmt schema init ... --target COLUMN').")
    data = read_records(args.data, "--data", schema=schema)
    classifier = schema.target.kind.value == "categorical"
    default = TrainingConfig.for_schema(schema, seed=args.seed,  # the task's (README)
                                        records=len(data))
    stopping = args.early_stopping
    config = TrainingConfig(
        epochs=args.epochs if args.epochs is not None else default.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
        early_stopping=default.early_stopping if stopping == "auto"
        else None if stopping == "none" else _fraction(stopping),
        patience=args.patience,
        hidden_units=tuple(args.hidden_units) if args.hidden_units is not None
        else default.hidden_units)
    print(f"Training a {'classifier' if classifier else 'regression'} for "
          f"{schema.target.name!r}: up to {config.epochs} epochs"
          + (f", stopped early on {config.early_stopping:.0%} of the records held out"
             if config.early_stopping else "")
          + f", hidden layers {list(config.hidden_units)}.")
    with progress(total=config.epochs, desc="training foundation", unit="epoch") as bar:
        def on_epoch_end(epoch: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update()

        foundation = train_foundation(data, schema, config, on_epoch_end=on_epoch_end)
    foundation.save(args.output, overwrite=args.force)
    print(f"Saved {args.output}.\n" + _quality(foundation, data))
    return 0


#: Below how many records held out `dmt train` says their comparison with the mean says
#: little: on a dozen, Boston's loop proxies chose their epoch by chance (helper-128).
FEW_HELD_OUT = 10


def _quality(foundation: Foundation, data: pd.DataFrame) -> str:
    """How the foundation scores on the records early stopping held out, beside the best
    prediction that ignores the inputs (helper-124: a model worse than the target's mean
    was reported by its training error alone), then on every training record."""
    from dmt_model.foundation import (
        EARLY_STOPPING_MIN_HELD_OUT,
        REGRESSION_TRAINING,
        _early_stopping_split,
    )

    config, task, featurizer = foundation.config, foundation.task, foundation.featurizer
    everything = foundation.evaluate(data).summary()
    kept, held = _early_stopping_split(len(data), config)
    if not len(held):
        return (f"  on the records it trained on: {everything}\n  (none were held out: this "
                "says little of how it does on new records; a regression stops early, and "
                "holds records out, from about "
                f"{EARLY_STOPPING_MIN_HELD_OUT / (REGRESSION_TRAINING.early_stopping or 1):.0f} "
                "records, "
                "or as --early-stopping says)")
    lines = [f"  on every record given, those held out too: {everything}"]
    part = data.iloc[held]
    actual = featurizer.target_values(part)
    model = task.metrics(foundation.predict(part), actual)
    floor = task.metrics(task.constant_prediction(
        featurizer, featurizer.target_values(data.iloc[kept]), len(part)), actual)
    ignoring = "the mean of the target" if task.kind == "regression" else "the class frequencies"
    lines[:0] = [f"  on the records held out to stop training (they chose its epoch): "
                 f"{model.summary()}",
                 f"  predicting {ignoring} instead: {floor.summary()}"]
    if len(held) < FEW_HELD_OUT:
        lines.append(
            f"  (only {len(held)} record{'' if len(held) == 1 else 's'} held out: the two "
            "figures above say little; give more proxy records, or hold out a larger part "
            "with --early-stopping)")
    if model.error >= floor.error:
        lines.append(
            f"Warning: on the records held out the foundation's {task.error_name} "
            f"({model.error:.4g}) is no better than predicting {ignoring} ({floor.error:.4g}): "
            "its inputs did not help. Check the schema's bounds and fields, give more proxy "
            "records, or try a smaller network (--hidden-units 16, or none for a linear one).")
    return "\n".join(lines)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise ValidationError(f"--early-stopping must be a fraction in (0, 1), 'none' or "
                              f"'auto', got {text!r}.")
    return value


def _export_format(args: argparse.Namespace) -> str:
    """``--format``, or else the output's suffix: ``.pte`` is ExecuTorch, anything else Core ML."""
    from pathlib import Path

    suffix = Path(args.output).suffix
    chosen = args.format or ("executorch" if suffix == ".pte" else "coreml")
    expected = ".pte" if chosen == "executorch" else ".mlmodel"
    if (suffix == ".pte") != (chosen == "executorch"):  # personalize reads the suffix
        raise ValidationError(f"-o {args.output}: a {chosen} export is written as a "
                              f"'{expected}' file; name it so (e.g. personal{expected}).")
    return chosen


def run_export(args: argparse.Namespace) -> int:
    import hashlib
    from typing import Any, cast

    from dmt_model.model_file import read_foundation

    refuse_existing(args.output, args.force, source=args.foundation)
    fmt = _export_format(args)
    foundation = read_foundation(args.foundation)
    if fmt == "coreml":  # without torch, which the export does not need (seconds saved)
        from dmt_model.coreml._spec import import_coremltools

        import_coremltools()
    from dmt_model.coreml import UpdateSettings, export_coreml

    settings = None
    if args.updatable or fmt == "executorch":  # an ExecuTorch program is always trainable
        given = {"updatable_layers": args.updatable_layers, "optimizer": args.optimizer,
                 "learning_rate": args.learning_rate, "batch_size": args.batch_size,
                 "epochs": args.epochs}  # what is not given keeps UpdateSettings' default
        settings = UpdateSettings(**{k: v for k, v in given.items() if v is not None},
                                  shuffle=not args.no_shuffle, seed=args.seed)
    # FoundationArrays offers what the exporters read from a Foundation, without torch.
    if fmt == "executorch":
        from dmt_model.executorch import export_executorch

        path = export_executorch(cast(Any, foundation), args.output, updatable=settings,
                                 version=args.version, overwrite=args.force)
    else:
        path = export_coreml(cast(Any, foundation), args.output, updatable=settings,
                             version=args.version, overwrite=args.force)
    kind = (f"updatable (last {settings.updatable_layers} layer(s), {settings.optimizer}, "
            f"lr {settings.learning_rate}, batch {settings.batch_size}, {settings.epochs} epochs)"
            if settings else "non-updatable")
    data = path.read_bytes()
    artifact = "ExecuTorch program" if fmt == "executorch" else "Core ML model"
    featurizer = foundation.featurizer
    inputs = featurizer.input_fields
    print(f"Wrote {path} ({len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}): "
          f"{kind} {artifact}, version {args.version}, schema {foundation.schema.name!r}; "
          f"{len(inputs)} inputs, predicts {featurizer.target}.")
    return 0


def run_personalize(args: argparse.Namespace) -> int:
    import sys
    import warnings
    from pathlib import Path

    from dmt_model.coreml import load_spec
    from dmt_model.personalize import (
        COPY_TOLERANCE,
        RepeatedPersonalizationWarning,
        UpdateEvent,
        _load_model,
        _version_words,
        featurizer_of,
        personalize,
        read_settings,
    )

    refuse_existing(args.output, args.force, source=args.records)
    if Path(args.model).suffix == ".pte":  # an ExecuTorch program, trained in its runtime
        from dmt_model.executorch import load_program

        spec = load_program(args.model)
        stored_epochs = spec.settings.epochs
    else:
        spec = load_spec(args.model)
        stored_epochs = read_settings(spec).epochs
    schema = featurizer_of(spec).schema
    records = read_records(args.records, "--records", schema=schema)
    holdout = read_records(args.holdout, "--holdout", schema=schema) if args.holdout else None
    if holdout is not None:
        # Checked first and on its own, so that an error in it names --holdout, not --records.
        featurizer = featurizer_of(spec)
        try:
            featurizer.schema.validate(holdout, columns=[*featurizer.input_fields,
                                                         featurizer.target])
            featurizer.transform(holdout, undeclared="zero")  # as personalize() reads it
        except ValidationError as exc:
            raise _named(f"--holdout {args.holdout}", exc) from None
    base = None
    if args.base is not None:  # read on its own, so that an error in it names --base
        try:
            base = _load_model(args.base)  # a .pte or a .mlmodel, as the model
        except (ModelFileError, OSError) as exc:
            raise ModelFileError(f"--base {args.base}: {exc}") from None
    epochs = args.epochs or stored_epochs
    overrides = {k: v for k, v in (("learning_rate", args.learning_rate),
                                   ("epochs", args.epochs),
                                   ("batch_size", args.batch_size)) if v is not None}
    caught: list[warnings.WarningMessage] = []
    try:
        with progress(total=epochs, desc="personalizing", unit="epoch") as bar, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RepeatedPersonalizationWarning)

            began = 0

            def on_event(event: UpdateEvent) -> None:
                nonlocal began
                # an update that diverged or did not settle trains again, slower; a
                # classifier's that stalled, faster
                if event.kind == "training_begin":
                    began += 1
                    if began > 1:
                        bar.reset()
                        bar.set_description(f"personalizing, again at another rate ({began})")
                        if bar.disable:
                            print("diverged, did not settle or stalled: personalizing again "
                                  "at another rate …", flush=True)
                elif event.kind == "epoch_end":
                    bar.set_postfix(loss=f"{event.loss:.3f}", refresh=False)
                    bar.update()

            result = personalize(args.model, records, holdout=holdout, output_path=args.output,
                                 on_event=on_event, base=base, **overrides)
    except ModelFileError as exc:
        if base is None or not str(exc).startswith("base "):
            raise
        raise ModelFileError(f"--base {args.base}: {exc}") from None
    except ValidationError as exc:
        held = str(exc).startswith("holdout records:")
        raise _named(f"--holdout {args.holdout}" if held else f"--records {args.records}",
                     exc) from None
    finally:  # said as the command line says it, once the bar is closed, error or not
        for warning in caught:
            if isinstance(warning.message, RepeatedPersonalizationWarning):
                print(f"warning: {args.model} was personalized before (from "
                      f"{_version_words(warning.message.came_from)}): personalizing it again "
                      "on its own compounds chance updates. Pass --base, the installed model "
                      "it came from, with all the records.", file=sys.stderr)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                       warning.lineno)
    if result.out_of_bounds:  # trained on as they are; said, since bounds are the schema's
        print(f"note: {result.out_of_bounds} of the records hold a number outside its field's "
              "bounds in the schema; the update trained on them as they are.", file=sys.stderr)
    if result.copies:  # helper-124: "on 25 records" of 41 given, without a word why
        print(f"note: {result.copies} of the records copy another (every number within "
              f"{COPY_TOLERANCE:g} of a spread of it, the rest equal): each trains and is "
              "scored once with it.", file=sys.stderr)
    if result.accepted:
        print(f"Updated {result.model_path}: {result.reason}.")
        return 0
    print(f"Not updated: {result.reason}")  # with --base, the reason says it is the base again
    return 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = subparsers.add_parser(
        "train", help="train a foundation model on proxy data (server side)",
        description="Train the foundation network (embeddings for categorical fields, Dense "
                    "64-32-1) with RMSProp on proxy data and save it as a pickle-free .npz.")
    train.add_argument("--data", help="CSV of proxy records (required)")
    train.add_argument("--schema", help="schema JSON describing the CSV, with a target field "
                                        "(required; write one with 'dmt schema init')")
    train.add_argument("-o", "--output", default="foundation.npz",
                       help="where to write the model (default: %(default)s)")
    train.add_argument("--epochs", type=int,
                       help="the most epochs (default: 500 for a regression, the reference "
                            "app's number; 300 for a classifier)")
    train.add_argument("--early-stopping", default="auto", metavar="FRACTION",
                       help="hold out this fraction of the records to pick the epoch and stop "
                            "when it stops improving; 'none' trains every epoch, as the "
                            "reference app did (default 'auto': 0.1, or none for a regression "
                            "of fewer than about 200 records)")
    train.add_argument("--patience", type=int, default=20,
                       help="epochs without improvement before stopping (default: 20)")
    train.add_argument("--hidden-units", type=int, nargs="*", metavar="N",
                       help="widths of the hidden layers (default: 64 32, the reference's; "
                            "none at all for a linear model on the embeddings, e.g. for text)")
    train.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="default: %(default)s")
    train.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    train.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    train.set_defaults(func=run_train)

    export = subparsers.add_parser(
        "export", help="export a foundation model as a Core ML .mlmodel or ExecuTorch .pte",
        description="Write a NeuralNetwork .mlmodel that takes raw field values (standardization "
                    "and category lookup happen inside the graph). With --updatable, the last "
                    "dense layers can be retrained on the device with MLUpdateTask. With "
                    "--format executorch, write an ExecuTorch training program (.pte) with "
                    "the same preprocessing, updatable layers and settings, trained on Android, "
                    "iOS or Linux by ExecuTorch's runtime (needs the 'executorch' extra).")
    export.add_argument("foundation", help="a model written by 'dmt train'")
    export.add_argument("-o", "--output", required=True, help="the .mlmodel or .pte to write")
    export.add_argument("--format", choices=("coreml", "executorch"),
                        help="default: executorch for a .pte output, else coreml")
    export.add_argument("--updatable", action="store_true", help="make it updatable on device")
    sdk = "default: UpdateSettings' (README, 'Personalization on any data')"
    export.add_argument("--updatable-layers", type=int,
                        help="how many inner-product layers, back from the output, are "
                             "updatable: 1 (the default) is the personal head, the only "
                             "choice whose learning rate does not depend on the target's units")
    export.add_argument("--optimizer", choices=("sgd", "adam"), help=sdk)
    export.add_argument("--learning-rate", type=float, help=sdk)
    export.add_argument("--batch-size", type=int, help=sdk)
    export.add_argument("--epochs", type=int, help=sdk)
    export.add_argument("--no-shuffle", action="store_true", help="keep example order")
    export.add_argument("--seed", type=int, default=0, help="shuffle seed (default: 0)")
    export.add_argument("--version", default="1", help="model version string (default: 1)")
    export.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    export.set_defaults(func=run_export)

    pers = subparsers.add_parser(
        "personalize", help="retrain an updatable model on a user's records",
        description="Update the model on the user's records: a .mlmodel with an emulation of "
                    "Core ML's on-device update, a .pte in ExecuTorch's runtime. The model is "
                    "replaced only if the update is better on held-out records (by default "
                    "cross-validated on --records, significantly at the task's confidence); "
                    "otherwise it is left as it was and the command exits with status 3. To "
                    "personalize again as records arrive, pass all the records and --base, "
                    "the version the model was personalized from.")
    pers.add_argument("model", help="the user's updatable .mlmodel, or ExecuTorch .pte")
    pers.add_argument("--records", required=True,
                      help="CSV of the user's records (model inputs and the target)")
    pers.add_argument("--holdout", help="CSV of held-out records for the check (default: "
                                        "cross-validation on --records)")
    pers.add_argument("--base", metavar="INSTALLED",
                      help="the version MODEL was personalized from (the installed .mlmodel "
                           "or .pte): personalize it on all of --records, and MODEL becomes "
                           "the update if kept, else INSTALLED itself; what personalizing "
                           "once gives, whatever earlier runs kept")
    pers.add_argument("-o", "--output", help="write the new model here instead of replacing "
                                             "MODEL")
    pers.add_argument("--learning-rate", type=float, help="override the model's")
    pers.add_argument("--epochs", type=int, help="override the model's")
    pers.add_argument("--batch-size", type=int, help="override the model's")
    pers.add_argument("--force", action="store_true",
                      help="replace the -o file if it exists (MODEL itself is replaced only "
                           "when the update passes the check)")
    pers.set_defaults(func=run_personalize)
