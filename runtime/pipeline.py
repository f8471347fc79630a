"""`hadskip.pipeline(model_dir)`: a callable in the shape of transformers' text-classification pipeline.

    pipe = hadskip.pipeline("models/h3")          # or pipeline("text-classification", model="models/h3")
    pipe("a fine movie")                           # [{"label": "positive", "score": 0.97}]
    pipe(["a", "b"])                               # [{...}, {...}]: the top label of each input
    pipe({"text": "premise", "text_pair": "hypothesis"})   # {...}: one pair gives one dict, as transformers
    pipe("a fine movie", top_k=None)               # every label, best first; top_k=N: the N best
    pipe(["a", "b"], top_k=2)                      # [[{...}, {...}], [{...}, {...}]]: a list per input
    pipe("a fine movie", budget=2.5)               # the budget dial, per call (pipeline(..., budget=) by default)

The return shapes are transformers' TextClassificationPipeline's (4.x), checked against it in
tests/test_pipeline.py: without `top_k` a text gives a one-dict list, a pair dict gives a bare dict and a list
gives one dict per input; with `top_k` (an int, or None for every label, sorted by score) an input gives a list
of dicts; a `top_k` given to `pipeline(...)` rather than to the call wraps a single text's answer in one more
list, as transformers does. Deviations: a (text, text_pair) tuple is a pair, as in `Runtime.predict`; a negative
top_k or a bool is refused; scores are always the softmax over the labels (no `function_to_apply`); there are no
tokenizer keyword arguments (truncation is the model dir's max_seq_len); iterables other than a list are read
into a list first (transformers streams them). A hub repo id loads through hadskip.runtime.hub (`hub` extra).
Empty text is classified as transformers does (only the special tokens), not refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.runtime.core import Runtime
from hadskip.runtime.hub import resolve_model
from hadskip.runtime.text import TextInput

TASKS = ("text-classification", "sentiment-analysis")
_UNSET = object()


def _one(item, n: int | None) -> TextInput:
    where = "input" if n is None else f"input {n}"
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        unknown = set(item) - {"text", "text_pair"}
        if unknown or not isinstance(item.get("text"), str):
            raise HadSkipError(f'{where}: a pair is {{"text": str, "text_pair": str}}, got keys '
                               f"{sorted(map(str, item))}")
        pair = item.get("text_pair")
        if pair is None:
            return item["text"]
        if not isinstance(pair, str):
            raise HadSkipError(f'{where}: "text_pair" must be a string, got {type(pair).__name__}')
        return item["text"], pair
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return item
    raise HadSkipError(f"{where} is a {type(item).__name__}; give a string, or a dict "
                       '{"text": ..., "text_pair": ...} for a text pair')


def _top_k(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HadSkipError(f"top_k must be a non-negative integer or None (every label), got {value!r}")
    return value


class TextClassificationPipeline:
    """A loaded model dir called like transformers' text-classification pipeline (see the module docstring).
    `runtime` is the underlying hadskip.runtime.Runtime; close() (or a with-block) releases it."""

    def __init__(self, runtime: Runtime, batch_size: int = 32, top_k=_UNSET):
        self.runtime = runtime
        self.batch_size = batch_size
        self._top_k = _UNSET if top_k is _UNSET else _top_k(top_k)

    @property
    def labels(self) -> list[str]:
        return self.runtime.labels

    def __call__(self, inputs, *, top_k=_UNSET, budget: float | None = None, batch_size: int | None = None):
        """[{"label", "score"}] per input (transformers' shapes); `budget`: the target average of layers for
        this call (None: the pipeline's); `batch_size`: inputs per batch (None: the pipeline's)."""
        called_with_top_k = top_k is not _UNSET
        k = _top_k(top_k) if called_with_top_k else self._top_k
        single = isinstance(inputs, (str, Mapping)) or (isinstance(inputs, tuple) and len(inputs) == 2
                                                         and all(isinstance(t, str) for t in inputs))
        if single:
            items = [_one(inputs, None)]
        elif hasattr(inputs, "__iter__"):
            items = [_one(x, n) for n, x in enumerate(inputs)]
        else:
            raise HadSkipError(f"inputs is a {type(inputs).__name__}; give a string, a dict "
                               '{"text", "text_pair"}, or a list of them')
        preds = self.runtime.predict(items, batch_size=batch_size or self.batch_size, budget=budget,
                                     allow_empty=True) if items else None
        names = self.runtime.labels
        out = []
        for n in range(len(items)):
            p = preds.probabilities[n]
            if k is _UNSET:  # transformers' "legacy" answer: the top label as one dict
                best = int(p.argmax())
                out.append({"label": names[best], "score": float(p[best])})
            else:
                ranked = sorted(range(len(names)), key=lambda i: (-float(p[i]), i))
                out.append([{"label": names[i], "score": float(p[i])} for i in ranked][:k])
        if not single:
            return out
        if isinstance(inputs, str) and not called_with_top_k:
            return [out[0]]  # a text always answers a list, and one more when top_k was set at pipeline(...)
        return out[0]

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> TextClassificationPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TextClassificationPipeline({self.runtime!r})"


def pipeline(task_or_model: str | Path, model: str | Path | None = None, *, backend: str = "ort-cpu",
             budget: float | None = None, batch_size: int = 32, top_k=_UNSET, revision: str | None = None,
             **load_options) -> TextClassificationPipeline:
    """`pipeline(model_dir)` or `pipeline("text-classification", model=model_dir)`: a TextClassificationPipeline
    on `backend`. `model`: a model dir, or a Hugging Face hub repo id ("user/name", at `revision`; a local folder
    of that name wins; see hadskip.runtime.hub). budget: the default target average of layers (the model's
    dial); load_options go to Runtime.load (threads, device_id, device, verify, ...)."""
    if model is None:
        model = task_or_model
    elif str(task_or_model) not in TASKS:
        raise HadSkipError(f"hadskip.pipeline does {' / '.join(TASKS)} only, not {task_or_model!r}")
    if batch_size < 1:
        raise HadSkipError(f"batch_size must be >= 1, got {batch_size}")
    path = resolve_model(model, revision)  # a local dir, else a hub repo id (runtime/hub.py)
    if not path.exists():
        raise HadSkipError(f"model dir {model} does not exist")
    top = _UNSET if top_k is _UNSET else _top_k(top_k)
    rt = Runtime.load(path, backend=backend, budget=budget, **load_options)
    return TextClassificationPipeline(rt, batch_size=batch_size, top_k=top)
