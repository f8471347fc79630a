"""Evaluation (needs torch): the PyTorch eval path (`evaluate`), `hadskip eval` reports (`report`) and their plots
(`plots`), the budget dial (`dial`), the baselines (`baselines/`) and `hadskip compare` (`compare/`, drawn by
`frontier`). Import the submodules; this package imports nothing."""
