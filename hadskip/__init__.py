"""hadskip: learn per-input layer skipping (HadSkip) for BERT-family encoders, export it, run it.

Importing this package is cheap and never imports torch or transformers: the training code lives in
submodules (`hadskip.modeling.encoder`, `hadskip.training.stages`, ...) that import torch themselves.
`hadskip.pipeline(model_dir)` (hadskip.runtime.pipeline, torch-free) is imported on first use.
"""

from hadskip.errors import HadSkipError

__version__ = "0.1.0"
__all__ = ["HadSkipError", "__version__", "pipeline"]


def pipeline(*args, **kwargs):
    """`hadskip.pipeline(model_dir)`: transformers-style text classification on the runtime; see
    hadskip.runtime.pipeline.pipeline (imported here on first call, so `import hadskip` stays cheap)."""
    from hadskip.runtime.pipeline import pipeline as _pipeline

    return _pipeline(*args, **kwargs)
