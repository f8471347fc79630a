"""Training (needs torch): settings (`config`, a leaf), losses, the step loop (`loop`), checks run before a run dir
exists (`preflight`), stage III's schedule math (`schedule`), the --resume record (`progress`), stage I
(`finetune`) and stages II-III (`stages`). Import the submodules; this package imports nothing."""
