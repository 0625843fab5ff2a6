"""Client imports stay light (issue 17, item 2): importing the packages a device needs does
not load scikit-learn or scipy, and every public name still resolves."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAZY = ("dmt_privacy.anonymity", "dmt_privacy.dp")


@pytest.mark.parametrize("module", ["dmt_privacy.sharing", "dmt_privacy.package",
                                    "dmt_privacy.anonymity", "dmt_privacy.dp",
                                    "dmt_privacy.anonymity.plan", "dmt_privacy.dp.receipt"])
def test_importing_loads_no_scikit_learn_or_scipy(module):
    code = (f"import sys, json\nimport {module}\n"
            "print(json.dumps([m for m in ('sklearn', 'scipy', 'torch') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("package", LAZY)
def test_every_public_name_resolves_to_its_submodule(package):
    module = importlib.import_module(package)
    exports = module._EXPORTS
    assert sorted(module.__all__) == sorted(exports)
    for name, submodule in exports.items():
        value = getattr(module, name)
        assert value is getattr(importlib.import_module(f"{package}.{submodule}"), name)
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_from_imports_still_work():
    from dmt_privacy.anonymity import KAnonymizer, read_released_csv
    from dmt_privacy.dp import LocalDPPerturber, ReleaseReceipt

    assert KAnonymizer.__module__ == "dmt_privacy.anonymity.anonymizer"
    assert read_released_csv.__module__ == "dmt_privacy.anonymity.released_table"
    assert LocalDPPerturber.__module__ == "dmt_privacy.dp.perturber"
    assert ReleaseReceipt.__module__ == "dmt_privacy.dp.receipt"
