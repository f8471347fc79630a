"""`hadskip compare`: the accuracy-compute frontier of one task, every method from the same teacher (run.py says
how methods are matched). One job a module:

    plan.py     the methods and CompareConfig
    reuse.py    which runs may be reused (the teacher, --hadskip runs, baselines in OUT), refusing any other
    run.py      `compare`: trains what is missing and evaluates every method
    rows.py     the rows calibrated on dev: early-exit and patience-exit rules, the HadSkip dial
    render.py   margins and compare.md
"""

from hadskip.evaluation.compare.plan import BASELINES, METHODS, CompareConfig
from hadskip.evaluation.compare.render import margins, to_markdown
from hadskip.evaluation.compare.reuse import check_hadskip_run
from hadskip.evaluation.compare.run import compare

__all__ = ["BASELINES", "METHODS", "CompareConfig", "check_hadskip_run", "compare", "margins", "to_markdown"]
