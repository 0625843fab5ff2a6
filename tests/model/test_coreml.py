import subprocess
import sys

import numpy as np
import pytest

from dmt_model.coreml import (
    UpdateSettings,
    build_spec,
    export_coreml,
    get_inner_product,
    load_spec,
    predict_frame,
    set_inner_product,
    updatable_layers,
)
from dmt_model.coreml._spec import import_coremltools, spec_bytes, spec_from_bytes
from dmt_model.coreml.evaluate import _featurizer
from dmt_model.coreml.validate import validate_updatable
from dmt_model.coreml.weights import weight_values
from dmt_model.personalize import featurizer_of
from dmt_privacy.errors import ModelFileError, UpdatableModelError


@pytest.fixture(scope="module")
def exported(foundation, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    plain = export_coreml(foundation, folder / "plain.mlmodel")
    updatable = export_coreml(foundation, folder / "updatable.mlmodel",
                              updatable=UpdateSettings(updatable_layers=2))
    return plain, updatable


@pytest.mark.parametrize("which", [0, 1])
def test_exported_models_equal_the_torch_foundation_on_all_rows(exported, foundation, boston,
                                                                 which):
    spec = load_spec(exported[which])
    expected = foundation.predict(boston)
    got = predict_frame(spec, boston)  # raw values in: standardization is in the graph
    assert got.shape == (506,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_coremltools_loads_both_and_metadata_travels(exported, foundation):
    ct = import_coremltools()
    for path in exported:
        model = ct.models.MLModel(str(path), skip_model_load=True)
        assert model.get_spec().specificationVersion >= 4
        assert featurizer_of(model.get_spec()).to_json() == foundation.featurizer.to_json()
    spec = load_spec(exported[1])
    assert spec.isUpdatable and updatable_layers(spec) == ["dense_2", "personal_head"]
    assert [f.name for f in spec.description.trainingInput][-1] == "MEDV_true"


def test_updatable_model_carries_all_foundation_weights(exported, foundation):
    spec = load_spec(exported[1])
    for i, layer in enumerate(foundation.dense_layers):
        weight, bias = get_inner_product(spec, f"dense_{i}")
        assert np.array_equal(weight, layer.weight.detach().numpy())
        assert np.array_equal(bias, layer.bias.detach().numpy())
    for name, emb in zip(foundation.featurizer.categorical_fields,
                         foundation.network.embeddings, strict=True):
        table, _ = get_inner_product(spec, f"embed_{name}")
        assert np.array_equal(table.T, emb.weight.detach().numpy())


def test_unknown_category_gives_zero_embedding_in_graph(exported, foundation, boston):
    spec = load_spec(exported[0])
    row = boston.head(1).copy()
    row["RAD"] = 13  # not a RAD value
    from dmt_model.features import Featurizer

    zero = Featurizer.from_dict({**foundation.featurizer.to_dict(), "unknown": "zero"})
    import torch

    tensors = foundation._tensors(zero.transform(row))
    with torch.no_grad():
        expected = foundation.network(*tensors).numpy()
    np.testing.assert_allclose(predict_frame(spec, row), expected, rtol=1e-5)


def test_validator_accepts_exports_with_any_suffix_length(foundation):
    for layers in (1, 2, 3, 4):
        for optimizer in ("sgd", "adam"):
            validate_updatable(build_spec(foundation, updatable=UpdateSettings(
                updatable_layers=layers, optimizer=optimizer)))


def _updatable(foundation):
    return build_spec(foundation, updatable=UpdateSettings(updatable_layers=1))


def test_validator_rejects_a_non_updatable_layer_after_an_updatable_one(foundation):
    spec = _updatable(foundation)
    layers = {layer.name: layer for layer in spec.neuralNetwork.layers}
    layers["personal_head"].isUpdatable = False
    layers["dense_2"].isUpdatable = True
    layers["dense_2"].innerProduct.weights.isUpdatable = True
    layers["dense_2"].innerProduct.bias.isUpdatable = True
    with pytest.raises(UpdatableModelError, match="personal_head.*contiguous suffix"):
        validate_updatable(spec)


def test_validator_rejects_forbidden_layer_between_updatable_and_loss(foundation):
    spec = build_spec(foundation, updatable=UpdateSettings(updatable_layers=3))
    relu = next(layer for layer in spec.neuralNetwork.layers if layer.name == "relu_1")
    relu.activation.linear.alpha = 1.0  # a linear activation may not stand there
    with pytest.raises(UpdatableModelError, match="relu_1.*stands between"):
        validate_updatable(spec)


def test_validator_rejects_updatable_embedding_and_bad_settings(foundation):
    spec = _updatable(foundation)
    next(la for la in spec.neuralNetwork.layers if la.name == "relu_1").isUpdatable = True
    with pytest.raises(UpdatableModelError, match="relu_1.*only innerProduct"):
        validate_updatable(spec)
    spec = _updatable(foundation)
    spec.neuralNetwork.updateParams.optimizer.sgdOptimizer.learningRate.defaultValue = 5.0
    with pytest.raises(UpdatableModelError, match="learningRate 5.0 is outside"):
        validate_updatable(spec)
    spec = _updatable(foundation)
    spec.specificationVersion = 3
    with pytest.raises(UpdatableModelError, match="version 3"):
        validate_updatable(spec)
    spec = _updatable(foundation)
    spec.neuralNetwork.updateParams.lossLayers[0].meanSquaredErrorLossLayer.input = "MEDV2"
    with pytest.raises(UpdatableModelError, match="MEDV2.*no layer produces"):
        validate_updatable(spec)


def test_weights_round_trip_and_refuse_bad_shapes(foundation):
    spec = _updatable(foundation)
    weight, bias = get_inner_product(spec, "dense_2")
    set_inner_product(spec, "dense_2", weight * 2, bias + 1)
    w2, b2 = get_inner_product(spec, "dense_2")
    assert np.array_equal(w2, weight * 2) and np.array_equal(b2, bias + 1)
    with pytest.raises(ModelFileError, match="shape"):
        set_inner_product(spec, "dense_2", weight.T)
    with pytest.raises(ModelFileError, match="NaN"):
        set_inner_product(spec, "dense_2", weight * np.nan)
    with pytest.raises(ModelFileError, match="no layer 'dense_9'"):
        get_inner_product(spec, "dense_9")


def test_corrupted_model_file_is_named(exported, tmp_path):
    data = exported[1].read_bytes()
    broken = tmp_path / "broken.mlmodel"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="broken.mlmodel"):
        load_spec(broken)
    with pytest.raises(ModelFileError, match="No Core ML model"):
        load_spec(tmp_path / "missing.mlmodel")


@pytest.mark.parametrize("n", [1, 63, 64, 65, 4095, 4096])  # (a 2- and a 3-byte length)
def test_weight_values_are_the_stored_float32s_to_the_bit(n):
    import_coremltools()
    from coremltools.proto import NeuralNetwork_pb2

    values = np.random.default_rng(n).normal(size=n).astype(np.float32)
    edges = np.array([-0.0, 1e-45, np.inf, -3.4e38], np.float32)  # sign, subnormal, range
    values[:min(n, 4)] = edges[:min(n, 4)]
    params = NeuralNetwork_pb2.WeightParams(isUpdatable=True)
    params.floatValue.extend(values.tolist())
    got = weight_values(params, what="test")
    assert got.dtype == np.float32 and got.flags.writeable
    assert got.tobytes() == values.tobytes() == np.asarray(params.floatValue,
                                                           np.float32).tobytes()
    params.floatValue[0] = 7.0  # read again: the new value, nothing remembered
    assert weight_values(params, what="test")[0] == 7.0


def test_a_spec_predicts_with_the_weights_just_set(foundation, boston):
    spec = _updatable(foundation)
    records = boston.iloc[:20]
    before = predict_frame(spec, records)
    weight, bias = get_inner_product(spec, "dense_2")
    set_inner_product(spec, "dense_2", weight * 2, bias + 1)
    after = predict_frame(spec, records)
    assert not np.array_equal(before, after)
    assert np.array_equal(after, predict_frame(spec_from_bytes(spec_bytes(spec)), records))
    set_inner_product(spec, "dense_2", weight, bias)
    assert np.array_equal(predict_frame(spec, records), before)


def test_the_featurizer_is_read_from_the_spec_as_it_is_now(foundation):
    spec = _updatable(foundation)
    featurizer_of(spec).target_scale_ = 1e9  # the caller's own object
    assert featurizer_of(spec).target_scale_ != 1e9
    assert _featurizer(spec).target_scale_ != 1e9
    changed = featurizer_of(spec)
    changed.target_scale_ = 123.0
    spec.description.metadata.userDefined["dmt.featurizer"] = changed.to_json()
    assert _featurizer(spec).target_scale_ == featurizer_of(spec).target_scale_ == 123.0


def test_importing_coremltools_is_quiet_and_loads_no_converter_dependency():
    # coremltools imports torchao (executorch's dependency), which logs a warning for
    # each of its CUDA kernels a CPU machine cannot load, and torch's pytree warns
    # that torchao registers an enum the old way: lines every user saw, none theirs to act on.
    # It imported executorch, torch and scikit-learn for converters the SDK never calls: 5-7 s
    # of every process that read or wrote a Core ML model. They load no more, and stay
    # importable.
    script = (
        "import logging, sys\n"
        "from dmt_model.coreml._spec import import_coremltools\n"
        "ct = import_coremltools()\n"
        "names = ('coremltools', 'torchao', 'torch.utils._pytree')\n"
        "print([logging.getLogger(n).level for n in names])\n"
        "hidden = ('torch', 'sklearn', 'executorch', 'torchao')\n"
        "print(sorted(m for m in hidden if m in sys.modules))\n"
        "import executorch, sklearn, torch\n"
        "print(import_coremltools() is ct)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=300)
    assert done.stderr == ""
    assert done.stdout.split() == ["[0,", "0,", "0]", "[]", "True"]


@pytest.mark.parametrize("export", ["coreml", "executorch"])
def test_a_target_whose_offset_rounds_away_the_heads_steps_is_warned_of(export, tmp_path):
    """helper-112: a target of 4e5 ± 5 gave no warning, yet float32 holds the personal head's
    bias there in steps of 0.031, more than half an update's step (learning rate 0.01 × the
    spread): updates rounded away, and users drawn like the proxy ended +0.58 % test RMSE
    at 5 records against +0.14 % without the offset (+0.07 % both at learning rate 0.1,
    whose steps float32 holds). An updatable export says so, naming the target."""
    import warnings

    import pandas as pd

    from dmt_model.features import FloatPrecisionWarning
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_privacy.schema import Field, Schema

    schema = Schema((Field("x", "numeric", bounds=(0.0, 1.0)), Field("y", "numeric", "target")))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 200)
    frame = pd.DataFrame({"x": x, "y": 30 * x + rng.normal(0, 3, 200)})  # a spread of 9

    def exported(offset, settings):
        foundation = train_foundation(frame.assign(y=frame["y"] + offset), schema,
                                      TrainingConfig(epochs=2))
        if export == "coreml":
            return build_spec(foundation, updatable=settings)
        pytest.importorskip("executorch.extension.training")
        from dmt_model.executorch import export_executorch

        return export_executorch(foundation, tmp_path / f"{offset}.pte", updatable=settings,
                                 overwrite=True)

    with pytest.warns(FloatPrecisionWarning, match=r"'y'.*learning rate 0\.01.*Subtract"):
        exported(4e5, UpdateSettings())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FloatPrecisionWarning)
        exported(0.0, UpdateSettings())
        exported(1e4, UpdateSettings())
        exported(4e5, UpdateSettings(learning_rate=0.5))
        if export == "coreml":  # (ExecuTorch trains with SGD only)
            # Adam's steps are the learning rate in the target's units whatever the offset
            exported(4e5, UpdateSettings(optimizer="adam"))
