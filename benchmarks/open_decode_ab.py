"""A/B in one process, interleaved: open (HPKE) + prescan + decode of server_load's 3-record
packages, dmt_privacy/package.py and dmt_model/server/prescan.py at a git revision (before)
against the working tree's (after); microseconds a package.

    .venv/bin/python benchmarks/open_decode_ab.py REV
"""
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from server_load import POLICY, make_envelopes

import dmt_privacy.package as new_pkg
from dmt_model.server import prescan as new_pre
from dmt_privacy.seal import ServerKeyring, generate_server_key, open_sealed


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tmp = Path(tempfile.mkdtemp())
for mod, rel in (("old_package", "dmt_privacy/package.py"),
                 ("old_prescan", "dmt_model/server/prescan.py")):
    (tmp / f"{mod}.py").write_bytes(subprocess.run(
        ["git", "show", f"{sys.argv[1]}:{rel}"], check=True, capture_output=True).stdout)
old_pkg = load("old_package", tmp / "old_package.py")
old_pre = load("old_prescan", tmp / "old_prescan.py")
key = generate_server_key()
ring = ServerKeyring([key])
envs = [e for _, e in make_envelopes(3000, key.public_key())]
info = new_pkg.PACKAGE_INFO
def path(pkg, pre):
    t = time.perf_counter()
    for e in envs:
        p = open_sealed(e, ring, info=info)
        assert pre.bounded_shape(p)
        pkg.decode_package(p, max_records=POLICY.max_records, max_bytes=POLICY.max_bytes)
    return (time.perf_counter() - t) / len(envs) * 1e6


res = {"before": [], "after": []}
for r in range(8):
    for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
        res[name].append(path(old_pkg, old_pre) if name == "before" else path(new_pkg, new_pre))
for k, v in res.items():
    print(k, f"median {statistics.median(v):.1f} us  min {min(v):.1f} us")
