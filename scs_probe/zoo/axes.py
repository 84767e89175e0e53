"""The study's variant axes, and the values that models from elsewhere take on them. A leaf: imports nothing."""

AXES = ("layer", "activation", "pool", "norm", "image_size")
GRIDS = ("study", "full")

# a model from elsewhere (torchvision:NAME, timm:NAME, package.module:factory) through `scs_probe.convert`: the
# model as it is (conv, keep, keep) or its sharpened twin; it keeps its own normalisation layers
EXTERNAL_AXES = {"layer": ("conv", "scs", "sdp"), "activation": ("keep", "none"), "pool": ("keep", "maxabs"),
                 "norm": ("keep",), "image_size": (32, 224)}
# the study's comparison for a model from elsewhere: the model as it is, its SCS twin without activations and
# with max-abs pooling, and the SCS twin that keeps the model's activations and pooling
EXTERNAL_STUDY_GRID = ({"layer": "conv", "activation": "keep", "pool": "keep"},
                       {"layer": "scs", "activation": "none", "pool": "maxabs"},
                       {"layer": "scs", "activation": "keep", "pool": "keep"})
