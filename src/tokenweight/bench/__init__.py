"""The KeyFact benchmark (``tokenweight bench keyfact``): every scheme, the oracle rows and the ablation rows ×
seeds × data variants, trained in-process with one budget and compared pairwise on one fixed evaluation set.

- :mod:`~tokenweight.bench.settings`: what one call runs (rows, seeds, variants, the budget);
- :mod:`~tokenweight.bench.rows`: a row label → scheme, settings overrides, oracle weights;
- :mod:`~tokenweight.bench.runs`: one run, measured per evaluation item, kept in its folder; worker processes;
- :mod:`~tokenweight.bench.stats`: paired bootstrap intervals over base models, seeds and distinct prompts, sign and
  Wilcoxon tests, detectable difference;
- :mod:`~tokenweight.bench.analysis`: the table's numbers; :mod:`~tokenweight.bench.claims`: the seed papers'
  claims and the comparison across facts files; :mod:`~tokenweight.bench.report`: markdown;
  :mod:`~tokenweight.bench.plots`: figures; :mod:`~tokenweight.bench.folders`: the report folder (written, read
  back, merged); :mod:`~tokenweight.bench.benchmark`: the whole run.
"""

from tokenweight.bench.benchmark import run_benchmark
from tokenweight.bench.report import DOCS_BEGIN, DOCS_END, markdown_report, markdown_table, update_docs
from tokenweight.bench.rows import default_rows, default_schemes
from tokenweight.bench.settings import VARIANTS, BenchSettings, quick_settings

__all__ = ["DOCS_BEGIN", "DOCS_END", "VARIANTS", "BenchSettings", "default_rows", "default_schemes",
           "markdown_report", "markdown_table", "quick_settings", "run_benchmark", "update_docs"]
