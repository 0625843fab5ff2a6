"""dmt_model: foundation models, updatable Core ML export, on-device
personalization (emulated on Linux), encrypted backups, and the server side.

Submodules import torch and coremltools only when they need them.
"""

__version__ = "0.1.0"
