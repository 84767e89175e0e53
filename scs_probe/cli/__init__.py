"""The `scs-probe` command line, one module per command family: `training` (train, sweep, tune), `analyses`
(saliency, pgd, compare, norms, report), `inspection` (zoo, inspect); shared options in `options`, value types
in `types`, the group and the error-to-exit-code mapping in `app`."""

from .app import cli, main

__all__ = ["cli", "main"]
