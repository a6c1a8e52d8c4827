"""anisora: train, sample, evaluate and align anime video diffusion transformers."""

import os

# No network at run time: weights come from local paths. Set HF_HUB_OFFLINE=0 to allow the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
