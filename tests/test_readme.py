"""The README is a front door: at most 200 lines, the two commands first, every figure it quotes found in
docs/BENCHMARKS.md (the measured section it summarises), so the two cannot drift apart, and one row per registered
scheme in its scheme table."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BENCHMARKS = (REPO / "docs/BENCHMARKS.md").read_text(encoding="utf-8")
#: A figure: a decimal number (signed or not, × or not), or a duration "N min N s".
FIGURE = re.compile(r"\d+ min \d+ s|[+−]?\d+\.\d+")


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a markdown text."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def measured(figure: str, text: str) -> bool:
    """``figure`` appears in ``text``: a duration verbatim, a number as one of ``text``'s numbers rounded to the
    figure's decimals."""
    if "min" in figure:
        return figure in text
    value, decimals = float(figure.replace("−", "-")), len(figure.split(".")[1])
    numbers = re.findall(r"[+−-]?\d+\.\d+", text)
    return any(round(float(n.replace("−", "-")), decimals) == value for n in numbers
               if len(n.split(".")[1]) >= decimals)


def test_the_readme_is_short_and_starts_with_the_two_commands():
    assert len(README.splitlines()) <= 200
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in block] == ["make train", "make test"]


def test_the_figures_of_make_train_are_those_measured_in_benchmarks():
    measured_section = section(BENCHMARKS, "`make train` on a clean clone")
    intro = README.split("```", 2)[2].split("\n\n")[1]  # the paragraph under the two commands: their times
    quoted = re.findall(r"\d+ min \d+ s", intro)
    assert len(quoted) >= 2, intro  # make train, make test
    quoted += FIGURE.findall(section(README, "What `make train` prints"))
    assert len(quoted) >= 10
    missing = [figure for figure in quoted if not measured(figure, measured_section)]
    assert missing == [], f"README figures not in docs/BENCHMARKS.md's `make train` section: {missing}"


def test_the_benchmark_figures_are_those_of_benchmarks_md():
    quoted = FIGURE.findall(section(README, "Benchmarks"))
    assert len(quoted) >= 10
    missing = [figure for figure in quoted if not measured(figure, BENCHMARKS)]
    assert missing == [], f"README figures not in docs/BENCHMARKS.md: {missing}"


def test_the_scheme_table_has_one_row_per_registered_scheme():
    from tokenweight.weights import SCHEMES

    lines = README.splitlines()
    start = lines.index("| `--weighting` | weights come from | paper |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(re.match(r"\| `([^`]+)` \|", line).group(1))
    assert sorted(rows) == sorted(SCHEMES) and len(rows) == len(set(rows))
