"""The baselines HadSkip is compared with (`hadskip compare`), all from the same teacher, trained as long as
HadSkip's stage III and distilled alike where the method allows:

    budgeted.py   budgeted exit: the first K layers, trained with task loss + KD (a static K-layer model)
    exits.py      one multi-exit model, exits trained jointly with the backbone (PABEE's weighting + KD)
    rules.py      its exit rules, entropy (DeeBERT) and patience (PABEE), calibrated on dev
    common.py     the config and training run they share
"""

from hadskip.evaluation.baselines.budgeted import layer_map, train_budgeted_exit, truncate
from hadskip.evaluation.baselines.common import BaselineConfig
from hadskip.evaluation.baselines.exits import exit_probs, load_exit_model, train_exit_model
from hadskip.evaluation.baselines.rules import entropy, exit_layers, patience_layers, threshold_for

__all__ = ["BaselineConfig", "entropy", "exit_layers", "exit_probs", "layer_map", "load_exit_model",
           "patience_layers", "threshold_for", "train_budgeted_exit", "train_exit_model", "truncate"]
