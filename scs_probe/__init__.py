"""scs-probe: does Sharpened Cosine Similarity beat convolution? Layers, zoo, training and analyses."""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    """`scs_probe.convert`, imported on first use (the package itself stays light to import)."""
    if name == "convert":
        return importlib.import_module(f"{__name__}.conversion").convert
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
