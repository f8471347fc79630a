"""hadskip: learn per-input layer skipping (HadSkip) for BERT-family encoders, export it, run it.

Importing this package is cheap and never imports torch or transformers: the training code lives in
submodules (`hadskip.modeling.encoder`, `hadskip.training.stages`, ...) that import torch themselves.
"""

from hadskip.errors import HadSkipError

__version__ = "0.1.0"
__all__ = ["HadSkipError", "__version__"]
