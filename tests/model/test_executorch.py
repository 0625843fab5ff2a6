"""ExecuTorch training programs: trained in the runtime, they equal the Core ML emulation and
plain torch; personalize, backup, adopt and the CLI take a .pte; bad files are named."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("executorch.extension.training",
                    reason="ExecuTorch is not installed (pip install 'dmt-sdk[executorch]')")

import torch

from dmt_model.cli import main
from dmt_model.coreml import UpdateSettings, build_spec, export_coreml
from dmt_model.coreml.evaluate import predict_frame
from dmt_model.coreml.weights import get_weights
from dmt_model.executorch import export_executorch, load_program
from dmt_model.foundation import TrainingConfig, train_foundation
from dmt_model.personalize import (
    adopt_new_version,
    batch_order,
    personalize,
    update_spec,
)
from dmt_model.tasks import HEAD_LOGIT_SCALE
from dmt_privacy.errors import ModelFileError, ValidationError

SMALL = TrainingConfig(epochs=3, hidden_units=(16,), seed=0)


# --- tasks: the Boston regression and the three classifiers of dmt_model.datasets -----------
def _boston(foundation, simulation):
    return foundation, simulation.users[3].train


def _digits():
    from dmt_model.datasets import DIGITS_SCHEMA, load_digits

    data = load_digits()
    return train_foundation(data.iloc[:300], DIGITS_SCHEMA, SMALL), data.iloc[400:412]


def _adult():
    from dmt_model.datasets import CLASSIFICATION_DATASETS

    dataset = CLASSIFICATION_DATASETS["adult"]
    if not dataset.available():
        pytest.skip("Adult data not found (the shared data folder is absent)")
    data = dataset.load()
    return train_foundation(data.iloc[:800], dataset.schema, SMALL), data.iloc[900:912]


def _wordnet():
    from dmt_model.datasets import CLASSIFICATION_DATASETS, WORDNET_TOPICS_SCHEMA
    from dmt_model.datasets.classification import load_wordnet_topics

    if not CLASSIFICATION_DATASETS["wordnet-topics"].available():
        pytest.skip("WordNet is not provisioned (make wordnet)")
    data = load_wordnet_topics(per_topic=40)
    proxy = data.iloc[::2]
    config = TrainingConfig(epochs=3, hidden_units=(), seed=0)  # linear, as the real one
    return train_foundation(proxy, WORDNET_TOPICS_SCHEMA, config), data.iloc[1::2].iloc[:12]


TASKS = {"boston": None, "digits": _digits, "adult": _adult, "wordnet": _wordnet}
# The same settings in both formats: the regression updates its last two layers with momentum,
# a classifier its per-class personal head (the only layer it may update).
SETTINGS = {"boston": UpdateSettings(updatable_layers=2, learning_rate=3e-4, batch_size=4,
                                     momentum=0.9),
            "classifier": UpdateSettings(learning_rate=0.05, batch_size=4)}


@pytest.fixture(scope="module")
def task_programs(foundation, simulation, tmp_path_factory):
    made: dict[str, tuple] = {}

    def get(name):
        if name not in made:
            model, records = _boston(foundation, simulation) if name == "boston" \
                else TASKS[name]()
            settings = SETTINGS["boston" if name == "boston" else "classifier"]
            path = export_executorch(model, tmp_path_factory.mktemp(name) / "p.pte",
                                     updatable=settings)
            made[name] = (model, records, build_spec(model, updatable=settings),
                          load_program(path), settings)
        return made[name]

    return get


def _plain_torch(foundation, frame, settings, epochs):
    """An independent fine-tune in plain torch: the foundation's own network and featurizer
    give the frozen features, torch.optim.SGD trains copies of the updatable layers."""
    featurizer, net = foundation.featurizer, foundation.network
    inputs = foundation._tensors(featurizer.transform(frame))
    classifier = bool(featurizer.classes_)
    with torch.no_grad():
        parts = [oh @ emb.weight for oh, emb in zip(inputs[1:], net.embeddings, strict=True)]
        h = torch.cat([*parts, inputs[0]], dim=1)
        frozen = net.dense if settings.updatable_layers == 1 else net.dense[:-1]
        features = frozen(h)
    trained = {}
    if settings.updatable_layers == 2:
        trained["dense_2"] = copy.deepcopy(net.dense[-1])
    target = torch.from_numpy(featurizer.target_values(frame))
    if classifier:
        classes = len(featurizer.classes_)
        features = features / HEAD_LOGIT_SCALE  # the export's head sees logits / K (tasks.py)
        head = [torch.nn.Parameter(torch.full((classes,), HEAD_LOGIT_SCALE)),
                torch.nn.Parameter(torch.zeros(classes))]
    else:
        head = [torch.nn.Parameter(torch.tensor([[featurizer.target_scale_]])),
                torch.nn.Parameter(torch.tensor([featurizer.target_mean_]))]
    params = [*(p for layer in trained.values() for p in layer.parameters()), *head]
    optimizer = torch.optim.SGD(params, lr=settings.learning_rate, momentum=settings.momentum)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few records per step: threads only wait for each other
    try:
        _sgd(features, target, trained, head, optimizer, classifier, settings, epochs)
    finally:
        torch.set_num_threads(threads)
    out = {f"{n}.{p}": getattr(layer, p).detach().numpy() for n, layer in trained.items()
           for p in ("weight", "bias")}
    out["personal_head.weight"], out["personal_head.bias"] = (p.detach().numpy() for p in head)
    return out


def _sgd(features, target, trained, head, optimizer, classifier, settings, epochs):
    n = len(target)
    for batches in batch_order(n, batch_size=settings.batch_size, epochs=epochs,
                               shuffle=True, seed=settings.seed):
        for index in batches:
            index = torch.from_numpy(index)
            x = features[index]
            for layer in trained.values():
                x = layer(x)
            optimizer.zero_grad()
            if classifier:
                loss = torch.nn.functional.cross_entropy(x * head[0] + head[1], target[index])
            else:
                loss = torch.mean(((x @ head[0].t() + head[1]).squeeze(1) - target[index]) ** 2)
            loss.backward()
            optimizer.step()


@pytest.mark.parametrize("epochs, rtol", [(1, 1e-5), (500, 1e-3)])
@pytest.mark.parametrize("task", list(TASKS))
def test_the_runtime_update_equals_the_core_ml_emulation_and_plain_torch(task_programs, task,
                                                                          epochs, rtol):
    model, records, spec, program, settings = task_programs(task)
    emulated, emulated_history = update_spec(spec, records, epochs=epochs)
    trained, history = program.updated(records, epochs=epochs)
    torch_params = _plain_torch(model, records, settings, epochs)
    assert sorted(trained.parameters) == sorted(torch_params) == sorted(program.metadata[
        "parameters"])
    for name, got in trained.parameters.items():
        layer, kind = name.split(".")
        weight, bias, _ = get_weights(emulated, layer)
        want = (weight if kind == "weight" else bias).reshape(got.shape)
        before = get_weights(spec, layer)[0 if kind == "weight" else 1].reshape(got.shape)
        assert not np.array_equal(got, before) or kind == "bias"  # the update did something
        for reference in (want, torch_params[name].reshape(got.shape)):
            np.testing.assert_allclose(got, reference, rtol=rtol,
                                       atol=rtol * max(np.abs(reference).max(), 1e-3))
    np.testing.assert_allclose(history.epoch_losses, emulated_history.epoch_losses,
                               rtol=10 * rtol)
    predicted, emulated_predicted = trained.predict(records), predict_frame(emulated, records)
    np.testing.assert_allclose(predicted, emulated_predicted, rtol=10 * rtol,
                               atol=10 * rtol * np.abs(emulated_predicted).max())


def test_the_program_predicts_what_the_core_ml_model_predicts_on_raw_values(task_programs):
    for task in ("boston", "digits"):
        _, records, spec, program, _ = task_programs(task)
        np.testing.assert_allclose(program.predict(records), predict_frame(spec, records),
                                   rtol=1e-5, atol=1e-5)


def test_the_program_carries_the_core_ml_exports_update_settings(task_programs):
    _, _, _, program, settings = task_programs("boston")
    assert program.settings == settings
    assert program.metadata["parameters"] == ["dense_2.weight", "dense_2.bias",
                                              "personal_head.weight", "personal_head.bias"]
    fields = [f["name"] for f in program.metadata["inputs"]]
    assert fields == program.featurizer.input_fields


def test_only_sgd_is_exported_and_a_classifier_updates_only_its_head(foundation,
                                                                     task_programs, tmp_path):
    with pytest.raises(ValidationError, match="SGD only"):
        export_executorch(foundation, tmp_path / "a.pte",
                          updatable=UpdateSettings(optimizer="adam"))
    digits = task_programs("digits")[0]
    with pytest.raises(ValidationError, match="only its personal head"):
        export_executorch(digits, tmp_path / "b.pte",
                          updatable=UpdateSettings(updatable_layers=2))
    assert not list(tmp_path.iterdir())


def test_a_program_s_update_moved_part_of_the_way_is_the_core_ml_one_moved_alike(task_programs):
    """A classifier's update kept on a label shift its records barely show moves only part of
    the way (``personalize._toward``): in both formats, to the same predictions."""
    from dmt_model.personalize import _toward

    _, records, spec, program, _ = task_programs("digits")
    start = program.parameter_values()
    for name, value in start.items():  # the program's own values are the Core ML head's
        weight, bias, _ = get_weights(spec, name.split(".")[0])
        want = weight if name.endswith("weight") else bias
        np.testing.assert_allclose(value, np.asarray(want).reshape(value.shape), rtol=1e-6)
    trained, _ = program.updated(records)
    emulated, _ = update_spec(spec, records)
    moved, moved_spec = _toward(program, trained, 0.3), _toward(spec, emulated, 0.3)
    for name, value in moved.parameter_values().items():
        np.testing.assert_allclose(value, start[name] + 0.3 * (trained.parameters[name]
                                                               - start[name]), rtol=1e-6)
    np.testing.assert_allclose(moved.predict(records), predict_frame(moved_spec, records),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(moved.predict(records), trained.predict(records), atol=1e-3)


# --- personalize, backup, adopt, the CLI -----------------------------------------------------
@pytest.fixture(scope="module")
def boston_files(foundation, tmp_path_factory):
    """The Boston foundation exported by the CLI as a .pte, and as an .mlmodel."""
    folder = tmp_path_factory.mktemp("pte")
    foundation.save(folder / "f.npz")
    assert main(["export", str(folder / "f.npz"), "--format", "executorch",
                 "-o", str(folder / "shipped.pte")]) == 0
    export_coreml(foundation, folder / "shipped.mlmodel", updatable=UpdateSettings())
    return folder


def _personal(boston_files, tmp_path, suffix=".pte"):
    path = tmp_path / f"personal{suffix}"
    path.write_bytes((boston_files / f"shipped{suffix}").read_bytes())
    return path


def test_a_base_of_the_other_format_is_refused_and_nothing_written(boston_files, simulation,
                                                                   tmp_path):
    """helper-98: ``personalize(personal.pte, records, base=shipped.mlmodel)`` passed the
    version and schema checks (both version 1) and wrote Core ML bytes into the .pte."""
    records = simulation.users[0].train
    for suffix, other in ((".pte", ".mlmodel"), (".mlmodel", ".pte")):
        personal = _personal(boston_files, tmp_path, suffix)
        before = personal.read_bytes()
        with pytest.raises(ModelFileError, match="format"):
            personalize(personal, records, base=boston_files / f"shipped{other}")
        assert personal.read_bytes() == before
    result = personalize(_personal(boston_files, tmp_path, ".pte"), records,
                         base=boston_files / "shipped.pte", epochs=20)
    assert result.accepted or result.reset_to_base
    load_program(tmp_path / "personal.pte")  # still a program


def test_personalize_trains_a_pte_in_the_runtime_like_the_emulation(boston_files, simulation,
                                                                    tmp_path):
    records = simulation.users[0].train
    events: dict[str, list] = {".pte": [], ".mlmodel": []}
    results = {}
    for suffix in events:
        path = _personal(boston_files, tmp_path, suffix)
        results[suffix] = personalize(path, records, epochs=20,
                                      on_event=lambda e, s=suffix: events[s].append(
                                          (e.kind, e.epoch, e.mini_batch)))
    pte, mlmodel = results[".pte"], results[".mlmodel"]
    assert pte.accepted == mlmodel.accepted and pte.prior_records == mlmodel.prior_records
    np.testing.assert_allclose(pte.holdout_loss_after, mlmodel.holdout_loss_after, rtol=1e-4)
    assert events[".pte"] == events[".mlmodel"] and events[".pte"][0][0] == "training_begin"
    assert pte.accepted  # user 0 is shifted: the update helps
    from dmt_model.coreml import load_spec

    personal = load_program(tmp_path / "personal.pte")
    np.testing.assert_allclose(personal.predict(records),
                               predict_frame(load_spec(tmp_path / "personal.mlmodel"), records),
                               rtol=1e-4)
    assert (tmp_path / "personal.pte").stat().st_mode & 0o777 == 0o600
    again = personalize(tmp_path / "personal.pte", simulation.users[0].test, epochs=5)
    assert np.isfinite(again.holdout_loss_before)  # re-personalizing reads the personal program


def test_a_worse_update_leaves_the_pte_as_it_was(boston_files, simulation, tmp_path):
    path = _personal(boston_files, tmp_path)
    before = path.read_bytes()
    result = personalize(path, simulation.users[1].train, learning_rate=1.0, epochs=50)
    assert not result.accepted
    assert path.read_bytes() == before


def test_backup_restore_adopt_and_repersonalize_a_pte(boston_files, simulation, tmp_path):
    from dmt_model.backup import backup, restore

    path = _personal(boston_files, tmp_path)
    shipped = (boston_files / "shipped.pte").read_bytes()
    records = simulation.users[0].train
    assert personalize(path, records, epochs=20).accepted
    backup(path, tmp_path / "personal.bak", "correct horse battery staple")
    restore(tmp_path / "personal.bak", tmp_path / "restored.pte", "correct horse battery staple")
    assert (tmp_path / "restored.pte").read_bytes() == path.read_bytes()
    np.testing.assert_array_equal(load_program(tmp_path / "restored.pte").predict(records),
                                  load_program(path).predict(records))
    result = adopt_new_version(boston_files / "shipped.pte", tmp_path / "restored.pte",
                               records, epochs=20)
    assert result.model_path == tmp_path / "restored.pte"
    load_program(tmp_path / "restored.pte")  # still a program, replaced or not
    assert (boston_files / "shipped.pte").read_bytes() == shipped  # the new version is not changed


@pytest.mark.parametrize("damage", ["not a program", "truncated", "foreign program"])
def test_a_bad_pte_is_named_and_nothing_is_written(boston_files, simulation, tmp_path, damage):
    shipped = (boston_files / "shipped.pte").read_bytes()
    path = tmp_path / "personal.pte"
    if damage == "not a program":
        data = b"PK\x03\x04 a zip, not a program" * 10
    elif damage == "truncated":
        data = shipped[: len(shipped) // 2]
    else:  # a valid ExecuTorch program that is not dmt's
        from executorch.exir import to_edge

        class Double(torch.nn.Module):
            def forward(self, x):
                return x * 2

        exported = torch.export.export(Double(), (torch.ones(2),), strict=True)
        data = bytes(to_edge(exported).to_executorch().buffer)
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match="not a dmt ExecuTorch training program") as error:
        personalize(path, simulation.users[0].train)
    assert str(path) in str(error.value) and "dmt export" in str(error.value)
    assert path.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == [
        "personal.pte"]


def test_a_pte_for_other_records_is_refused(boston_files, task_programs, simulation, tmp_path):
    digits = tmp_path / "digits.pte"
    digits.write_bytes(task_programs("digits")[3].data)
    personal = _personal(boston_files, tmp_path)
    before = personal.read_bytes()
    with pytest.raises(ModelFileError, match="describes different records"):
        adopt_new_version(digits, personal, simulation.users[0].train)
    with pytest.raises(ModelFileError, match="different formats"):
        adopt_new_version(boston_files / "shipped.mlmodel", personal, simulation.users[0].train)
    with pytest.raises(ModelFileError, match=f"{digits}.*other records"):
        load_program(digits, schema_id=load_program(personal).metadata["schema_id"])
    assert personal.read_bytes() == before


def test_the_cli_exports_and_personalizes_a_pte(boston_files, simulation, tmp_path, capsys):
    records = tmp_path / "user.csv"
    simulation.users[0].train.to_csv(records, index=False)
    personal = _personal(boston_files, tmp_path)
    assert main(["personalize", str(personal), "--records", str(records),
                 "--epochs", "20"]) == 0
    assert "Updated" in capsys.readouterr().out
    assert main(["export", str(boston_files / "f.npz"), "--format", "executorch",
                 "-o", str(tmp_path / "x.mlmodel")]) == 1
    assert "written as a '.pte' file" in capsys.readouterr().err
    assert not (tmp_path / "x.mlmodel").exists()


@pytest.mark.parametrize("importer", ["dmt_model.executorch.export:import_executorch",
                                      "dmt_model.coreml._spec:import_coremltools"])
def test_importing_executorch_shows_none_of_its_warnings_and_later_ones_still_show(importer):
    """Importing executorch (ours, or coremltools', which imports it when installed) raised
    DeprecationWarnings no user can act on: importlib.resources' legacy read_text and open_text
    (executorch's edge dialect), torch.jit.script_method (torch.export, 15 times) and
    executorch's ExperimentalWarning, and torchao logged its CUDA kernels. Python hides
    DeprecationWarning outside ``__main__``, but Flower's simulation shows each once
    (flwr.simulation.ray_transport.utils), so examples/compare_sharing_with_fedavg.py printed
    them on stderr. They are hidden during the import only: a warning raised after it shows."""
    module, name = importer.split(":")
    script = (
        "import json, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    from {module} import {name}\n"
        f"    {name}()\n"
        "    warnings.warn('raised after the import', DeprecationWarning)\n"
        "print(json.dumps([str(w.message) for w in caught]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=300)
    assert json.loads(done.stdout) == ["raised after the import"]
    assert done.stderr == ""


def test_compiling_third_party_source_says_nothing_of_its_invalid_escapes():
    """Reported (CI at dd19969): with pip's byte-compiling off (`make install` passes
    --no-compile), the first import of executorch compiles its modules, and Python warns of
    each invalid escape sequence in their source (DeprecationWarning on 3.11, SyntaxWarning
    from 3.12), which the two tests above saw. Compiling in the quiet block says nothing."""
    from dmt_model.coreml._spec import quiet_third_party

    source = 'pattern = "\\d+"\n'  # the escape executorch's sources hold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_third_party():
            compile(source, "executorch/fake.py", "exec")
        assert caught == []
        compile(source, "ours.py", "exec")  # after the block, it is shown again
    assert [str(w.message) for w in caught] == ["invalid escape sequence '\\d'"]


def test_exporting_a_pte_shows_none_of_executorchs_warnings_and_later_ones_still_show(
        foundation, tmp_path):
    """Exporting a program raised, after the quiet import, executorch's flatbuffer serializer's
    DeprecationWarning (importlib.resources' legacy read_binary) and torch's pytree FutureWarning
    (``isinstance(treespec, LeafSpec)``), which Python shows by default: ``dmt export --format
    executorch`` printed it on stderr three times. They are hidden during the export only: the
    same FutureWarning raised after it shows."""
    foundation.save(tmp_path / "f.npz")
    leaf_spec = ("`isinstance(treespec, LeafSpec)` is deprecated, "
                 "use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead.")
    script = (
        "import json, sys, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from dmt_model.executorch import export_executorch\n"
        "    from dmt_model.model_file import read_foundation\n"
        "    export_executorch(read_foundation(sys.argv[1]), sys.argv[2])\n"
        f"    warnings.warn({leaf_spec!r}, FutureWarning)\n"
        "print(json.dumps([str(w.message) for w in caught]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "f.npz"),
                           str(tmp_path / "p.pte")], capture_output=True, text=True, check=True,
                          timeout=300)
    assert json.loads(done.stdout) == [leaf_spec]
    assert done.stderr == ""
    load_program(tmp_path / "p.pte")


def test_the_program_holds_inputs_within_the_reach_as_the_core_ml_model(tmp_path):
    """A field learned from a sliver of its bounds (a log-normal income, bounds 0-10**7):
    values far beyond what the proxy showed read as at its reach (INPUT_REACH spreads from
    its mean) in both formats, as in the featurizer the foundation trained through; values
    within it are read as they are."""
    import pandas as pd

    from dmt_privacy.schema import Field, Schema

    rng = np.random.default_rng(0)
    income = np.exp(rng.normal(np.log(5e4), 0.8, 300))
    proxy = pd.DataFrame({"income": income, "age": rng.uniform(20, 70, 300)})
    proxy["y"] = 3 * np.log(income / 5e4) + 0.05 * (proxy["age"] - 45)
    schema = Schema((Field("income", "numeric", bounds=(0.0, 1e7)),
                     Field("age", "numeric", bounds=(18.0, 90.0)),
                     Field("y", "numeric", "target")))
    foundation = train_foundation(proxy, schema, TrainingConfig(epochs=30, seed=0))
    featurizer = foundation.featurizer
    assert np.isfinite(featurizer.reach_[0]) and not np.isfinite(featurizer.reach_[1])
    settings = UpdateSettings()
    spec = build_spec(foundation, updatable=settings)
    program = load_program(export_executorch(foundation, tmp_path / "p.pte", updatable=settings))
    at_reach = featurizer.mean_[0] + featurizer.reach_[0] * featurizer.scale_[0]
    far = pd.DataFrame({"income": [1e7, 5e6, 2e4, 3e5], "age": [30.0, 80.0, 25.0, 60.0]})
    edge = far.assign(income=np.minimum(far["income"], at_reach))
    for predict in (program.predict, lambda d: predict_frame(spec, d), foundation.predict):
        np.testing.assert_allclose(predict(far), predict(edge), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(program.predict(far), predict_frame(spec, far), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(foundation.predict(far), program.predict(far), rtol=1e-4,
                               atol=1e-4)
    assert abs(program.predict(far)[3] - program.predict(far)[2]) > 1.0  # learned, not flat
