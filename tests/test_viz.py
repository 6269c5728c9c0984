"""Token-weight heatmaps: colours, the terminal rendering, the HTML report in a real headless browser, and the
OTPO transport plan of `tokenweight weights`."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import pytest
import torch
from rich.console import Console

from conftest import standard_rows
from tokenweight.cli import main
from tokenweight.viz import PairView, html_report, terminal_heatmap, weight_colour

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_colours_and_terminal_heatmap():
    pair = PairView(0, "q ?", ["a", "b"], [1.0, 3.0], ["c"], [2.0])
    assert (pair.low, pair.top, pair.share(2.0)) == (1.0, 3.0, 0.5)
    assert weight_colour(0.0) == (255, 255, 255) and weight_colour(1.0) == (214, 39, 40)
    assert weight_colour(pair.share(2.0)) == (234, 147, 148)
    buffer = io.StringIO()
    terminal_heatmap([pair], Console(file=buffer, width=80, force_terminal=True, color_system="truecolor"))
    out = buffer.getvalue()  # the token texts on their truecolor backgrounds
    for token, (r, g, b) in (("a", (255, 255, 255)), ("b", (214, 39, 40)), ("c", (234, 147, 148))):
        assert re.search(rf"48;2;{r};{g};{b}m{token}\x1b", out), token
    with pytest.raises(ValueError, match="pair 3: 2 chosen tokens but 1 weights"):
        PairView(3, "q", ["a", "b"], [1.0], ["c"], [1.0])


def _browser(args: list[str], profile) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_weights_report_in_headless_browser(tmp_path, tiny_model_dir, tokenizer):
    rows = standard_rows(3)
    for i, row in enumerate(rows):  # column weights: a known value per token
        for side in ("chosen", "rejected"):
            n = len(tokenizer(row["prompt"] + row[side] + tokenizer.eos_token)["input_ids"]) - \
                len(tokenizer(row["prompt"])["input_ids"])
            row[f"{side}_weights"] = [round(0.25 * (k % 5), 2) for k in range(n)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "report.html"
    main(["weights", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(data),
          "--weighting", "column", "--num_pairs", "2", "--output", str(report)])

    dom = _browser(["--dump-dom", report.as_uri()], tmp_path / "profile")
    assert re.search(r'<body[^>]*data-ok="1"', dom), "the page's load script did not run"
    spans = re.findall(r'<span class="tok" data-weight="([^"]+)" title="([^"]*)"', dom)
    expected = [w for row in rows[:2] for side in ("chosen", "rejected") for w in row[f"{side}_weights"]]
    assert [float(w) for w, _ in spans] == pytest.approx(expected)
    assert all(re.search(r"weight \d+\.\d{4}$", title) for _, title in spans)
    assert "weighting</td><td>column" in dom

    screenshot = tmp_path / "report.png"
    _browser(["--window-size=1200,900", f"--screenshot={screenshot}", report.as_uri()], tmp_path / "profile")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 5000


def test_otpo_plan_marginals_are_the_scheme_weights(tmp_path, tiny_model_dir):
    pytest.importorskip("tokenweight.weights.otpo")  # importing registers the scheme
    from tokenweight.commands.common import build_config
    from tokenweight.commands.weights import weight_views

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in standard_rows(2)))
    args = type("Args", (), {"config": None, "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data),
                             "weighting": "otpo", "max_length": None})()
    views = weight_views(build_config(args), str(tiny_model_dir), "train", 2)
    for view in views:
        plan = torch.as_tensor(view.plan)
        assert plan.shape == (len(view.chosen_tokens), len(view.rejected_tokens))
        assert plan.sum(dim=1).tolist() == pytest.approx(view.chosen_weights, rel=1e-4, abs=1e-6)
        assert plan.sum(dim=0).tolist() == pytest.approx(view.rejected_weights, rel=1e-4, abs=1e-6)
    page = html_report(views, {"weighting": "otpo"})
    assert page.count('src="data:image/png;base64,') == len(views)
