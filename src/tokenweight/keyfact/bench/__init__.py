"""The KeyFact benchmark (``tokenweight bench keyfact``): every scheme, the oracle rows and the ablation rows ×
seeds × data variants, trained in-process with one budget and compared pairwise on one fixed evaluation set.

- :mod:`~tokenweight.keyfact.bench.settings`: what one call runs (rows, seeds, variants, the budget);
- :mod:`~tokenweight.keyfact.bench.rows`: a row label → scheme, settings overrides, oracle weights;
- :mod:`~tokenweight.keyfact.bench.runs`: one run, measured per evaluation item, kept in its folder; worker processes;
- :mod:`~tokenweight.keyfact.bench.stats`: paired bootstrap intervals over base models, seeds and distinct prompts, sign and
  Wilcoxon tests, detectable difference;
- :mod:`~tokenweight.keyfact.bench.analysis`: the table's numbers; :mod:`~tokenweight.keyfact.bench.claims`: the seed papers'
  claims and the comparison across facts files; :mod:`~tokenweight.keyfact.bench.report`: markdown;
  :mod:`~tokenweight.keyfact.bench.plots`: figures; :mod:`~tokenweight.keyfact.bench.folders`: the report folder (written, read
  back, merged); :mod:`~tokenweight.keyfact.bench.benchmark`: the whole run.
"""

from tokenweight.keyfact.bench.benchmark import run_benchmark
from tokenweight.keyfact.bench.report import DOCS_BEGIN, DOCS_END, markdown_report, markdown_table, update_docs
from tokenweight.keyfact.bench.rows import default_rows, default_schemes
from tokenweight.keyfact.bench.settings import VARIANTS, BenchSettings, quick_settings

__all__ = ["DOCS_BEGIN", "DOCS_END", "VARIANTS", "BenchSettings", "default_rows", "default_schemes",
           "markdown_report", "markdown_table", "quick_settings", "run_benchmark", "update_docs"]
