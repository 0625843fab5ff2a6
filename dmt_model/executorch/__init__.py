"""On-device training in a real runtime: dmt foundations as ExecuTorch training programs.

:func:`export_executorch` writes a ``.pte`` with the featurizer's
preprocessing, the training loss and its backward pass inside, the same
updatable layers and update settings as the Core ML export; a
:class:`TrainingProgram` (:func:`load_program`) trains in ExecuTorch's own
runtime, as on Android and iOS, and :func:`dmt_model.personalize.personalize`
accepts a ``.pte`` wherever it accepts an ``.mlmodel``. Needs the
``executorch`` extra (``pip install 'dmt-sdk[executorch]'``); torch and
ExecuTorch are imported only when a program is built or run.
"""

from dmt_model.executorch.export import export_executorch, import_executorch, program_bytes
from dmt_model.executorch.program import TrainingProgram, load_program, program_from_bytes

__all__ = [
    "TrainingProgram",
    "export_executorch",
    "import_executorch",
    "load_program",
    "program_bytes",
    "program_from_bytes",
]
