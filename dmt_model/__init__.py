"""dmt_model: foundation models, updatable Core ML export, on-device
personalization (emulated on Linux), encrypted backups, and the server side.

Submodules import torch and coremltools only when they need them.
"""


def __getattr__(name: str) -> str:
    """``__version__``: the installed ``dmt-sdk``'s, as ``dmt_privacy.__version__``."""
    if name == "__version__":
        import dmt_privacy

        return dmt_privacy.__version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
