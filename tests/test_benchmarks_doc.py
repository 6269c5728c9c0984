"""The summary of docs/BENCHMARKS.md quotes only what its detailed tables show: every number of a goal's "measured"
cell appears in the section the row names as its source, every goal says where it was measured, and every ratio the
README quotes appears in docs/BENCHMARKS.md (a summary cannot keep a number a re-run replaced); the step-overhead
goals' verdicts are those their measured ranges give, in the detailed table and in the summary."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = (REPO / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
NUMBER = re.compile(r"\d+\.\d+(?:e-?\d+)?")


def sections(text: str) -> dict[str, str]:
    """``## heading`` → its text up to the next ``## `` heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2])}


def summary_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first table (before the first ``## `` section), keyed by the header cells."""
    head = text.split("\n## ", 1)[0]
    lines = [line for line in head.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_every_summary_number_is_in_its_source_section():
    rows, by_heading = summary_rows(BENCHMARKS), sections(BENCHMARKS)
    assert len(rows) >= 10 and list(rows[0]) == ["goal", "measured", "where", "status", "source"]
    for row in rows:
        assert row["where"] in {"CPU", "GPU", "not measured"}, row["goal"]
        assert row["source"] in by_heading, f"{row['goal']}: no section {row['source']!r}"
        body = by_heading[row["source"]]
        for number in NUMBER.findall(row["measured"]):
            assert number in body, f"{row['goal']}: {number} is not in section {row['source']!r}"


def test_every_ratio_the_readme_quotes_is_in_the_benchmarks_doc():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for number in re.findall(r"(\d+\.\d+)×", readme):
        assert number in BENCHMARKS, f"README quotes {number}×, which docs/BENCHMARKS.md does not show"


def test_step_overhead_verdicts_follow_their_spread():
    """Each goal of the step-overhead goals table carries the verdict its range gives (met only when the whole range
    is at or under the limit, not met when over it, unresolved when it straddles), every goal of
    ``benchmarks/step_overhead.py`` is in that table, and the summary row quoting a goal's range starts with its
    verdict."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from step_overhead import GOALS, goal_name, time_key, verdict

    source = "Training-step overhead of each scheme"
    lines = [line for line in sections(BENCHMARKS)[source].splitlines() if line.startswith("| ")]
    detailed = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        match = re.fullmatch(r".* ≤ (\d+\.\d+)× uniform", cells[0])
        if match and len(cells) == 3:
            low, high = map(float, re.fullmatch(r"\d+\.\d+ \[(\d+\.\d+)–(\d+\.\d+)\]", cells[1]).groups())
            assert cells[2] == verdict(low, high, float(match.group(1))), cells
            detailed[cells[0]] = cells[1:]
    assert set(detailed) == {goal_name(variant, time_key("cpu") if key == "step_s" else key, limit)
                             for variant, key, limit in GOALS}  # measured on CPU
    quoted = set()
    for row in summary_rows(BENCHMARKS):
        for goal, (ratio, status) in detailed.items():
            if row["source"] == source and ratio in row["measured"]:
                assert row["status"].startswith(f"**{status}**"), (goal, row["status"])
                quoted.add(goal)
    assert quoted == set(detailed), f"goals the summary does not quote: {set(detailed) - quoted}"
