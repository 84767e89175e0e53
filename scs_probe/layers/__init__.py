"""Sharpened cosine similarity layers: drop-in replacements for nn.Conv2d and nn.MaxPool2d."""

from .backend import BACKENDS, backend_used, get_backend, set_backend
from .functional import EPS, max_abs_pool2d, pool_spec, sharpened_cosine_similarity2d, sharpened_sdp2d
from .sequential import PoolFusedSequential
from .sharpened import P_MIN, CosineSimilarity2d, MaxAbsPool2d, SharpenedCosineSimilarity2d, SharpenedSDP2d

SHARPENED_LAYERS = (SharpenedCosineSimilarity2d, SharpenedSDP2d)

__all__ = ["EPS", "P_MIN", "CosineSimilarity2d", "MaxAbsPool2d", "SharpenedCosineSimilarity2d", "SharpenedSDP2d",
           "SHARPENED_LAYERS", "PoolFusedSequential", "max_abs_pool2d", "pool_spec", "sharpened_cosine_similarity2d",
           "sharpened_sdp2d", "BACKENDS", "backend_used", "get_backend", "set_backend"]
