"""Token-weight heatmaps: terminal (rich), one self-contained HTML report, and PNG figures (matplotlib).

A :class:`PairView` holds one preference pair's completion tokens (as text) and their weights. Colours run from
white (the smallest weight of the pair, both sides together) to red (the largest), so the two sides of a pair are
comparable and small differences (OTPO's weights stay near 1) remain visible; a pair whose weights are all equal
renders pale. The exact weight is in each token's hover text (``title``) in HTML.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.text import Text

_HOT = (214, 39, 40)  # the colour of the largest weight


@dataclass
class PairView:
    """One pair: ``*_tokens`` are the completion tokens' texts, ``*_weights`` their weights (same lengths).

    ``plan`` is an optional ``[n_chosen, n_rejected]`` matrix drawn under the pair (OTPO's transport plan);
    ``chosen_key`` / ``rejected_key`` optionally mark one token of each side (KeyFact's key slot) in the figures.
    """

    index: int
    prompt: str
    chosen_tokens: list[str]
    chosen_weights: list[float]
    rejected_tokens: list[str]
    rejected_weights: list[float]
    plan: np.ndarray | None = None
    chosen_key: int | None = None
    rejected_key: int | None = None

    def __post_init__(self):
        for side in ("chosen", "rejected"):
            tokens, weights = getattr(self, f"{side}_tokens"), getattr(self, f"{side}_weights")
            if len(tokens) != len(weights):
                raise ValueError(f"pair {self.index}: {len(tokens)} {side} tokens but {len(weights)} weights")

    @property
    def low(self) -> float:
        """The smallest weight of the pair."""
        return min([*self.chosen_weights, *self.rejected_weights])

    @property
    def top(self) -> float:
        """The largest weight of the pair."""
        return max([*self.chosen_weights, *self.rejected_weights])

    def share(self, weight: float) -> float:
        """Where ``weight`` lies between :attr:`low` (0) and :attr:`top` (1); 0.25 when all weights are equal."""
        spread = self.top - self.low
        return 0.25 if spread <= 1e-9 * max(abs(self.top), 1.0) else (weight - self.low) / spread


def weight_colour(share: float) -> tuple[int, int, int]:
    """RGB from white (``share`` 0) to red (1), linear, clipped."""
    share = min(max(share, 0.0), 1.0)
    return tuple(round(255 + (hot - 255) * share) for hot in _HOT)


def _text_colour(share: float) -> str:
    return "white" if share > 0.6 else "black"


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """One readable text per token id (special tokens kept)."""
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


# ----------------------------------------------------------------------------------------------- terminal


def terminal_heatmap(pairs: list[PairView], console: Console | None = None, header: str = "") -> None:
    """Print each pair's chosen and rejected tokens on a white→red background scaled by weight."""
    console = console or Console()
    if header:
        console.print(header, style="bold")
    for pair in pairs:
        console.print(Text(f"pair {pair.index}: {pair.prompt}", style="bold"))
        for side in ("chosen", "rejected"):
            line = Text(f"  {side:>8}: ")
            for token, weight in zip(getattr(pair, f"{side}_tokens"), getattr(pair, f"{side}_weights")):
                r, g, b = weight_colour(pair.share(weight))
                line.append(token, style=f"{_text_colour(pair.share(weight))} on rgb({r},{g},{b})")
                line.append(" ")
            console.print(line)
        console.print(f"  weights from {pair.low:.3f} (white) to {pair.top:.3f} (red)", style="dim")


# ----------------------------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: 1em; }
table.settings td { padding: 0 1em 0 0; font-family: monospace; }
section.pair { margin: 1em 0 2em; }
div.sides { display: flex; gap: 2em; }
div.side { flex: 1 1 0; min-width: 0; line-height: 2; }
span.tok { display: inline-block; line-height: 1.4; padding: 1px 3px; margin: 1px; border-radius: 3px;
           font-family: monospace; }
div.legend span { display: inline-block; width: 2em; height: 1em; }
img.plan { max-width: 420px; margin-top: .5em; }
"""


def _token_spans(pair: PairView, side: str) -> str:
    spans = []
    for position, (token, weight) in enumerate(zip(getattr(pair, f"{side}_tokens"), getattr(pair, f"{side}_weights"))):
        r, g, b = weight_colour(pair.share(weight))
        spans.append(f'<span class="tok" data-weight="{weight:.6g}" title="{html.escape(token)} (#{position}): '
                     f'weight {weight:.4f}" style="background: rgb({r},{g},{b}); color: '
                     f'{_text_colour(pair.share(weight))}">{html.escape(token)}</span>')
    return "".join(spans)


def html_report(pairs: list[PairView], settings: dict, title: str = "tokenweight: token weights") -> str:
    """A self-contained HTML page: the settings in the header, then each pair's chosen and rejected tokens side by
    side (hover shows the weight), and the plan image when a pair has one. No external resources; a tiny inline
    script marks ``document.body.dataset.ok = "1"`` once the page has loaded (used by the browser test)."""
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in settings.items())
    legend = "".join(f'<span style="background: rgb{weight_colour(s)}"></span>' for s in np.linspace(0, 1, 8))
    body = []
    for pair in pairs:
        sides = "".join(
            f'<div class="side {side}"><h3>{side} (Σw = {sum(getattr(pair, f"{side}_weights")):.3f})</h3>'
            f'{_token_spans(pair, side)}</div>'
            for side in ("chosen", "rejected"))
        plan = ""
        if pair.plan is not None:
            plan = (f'<div><h3>transport plan</h3><img class="plan" alt="transport plan of pair {pair.index}" '
                    f'src="data:image/png;base64,{plan_png_base64(pair)}"></div>')
        body.append(f'<section class="pair" id="pair-{pair.index}"><h2>pair {pair.index}: '
                    f'{html.escape(pair.prompt)}</h2><div class="sides">{sides}</div>{plan}'
                    f'<p>weights from {pair.low:.4f} (white) to {pair.top:.4f} (red)</p></section>')
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><header><h1>{html.escape(title)}</h1>"
            f'<table class="settings">{rows}</table><div class="legend">smallest {legend} largest weight of each pair</div>'
            f"</header>{''.join(body)}"
            '<script>window.addEventListener("load", function () { document.body.dataset.ok = "1"; });</script>'
            "</body></html>")


# ----------------------------------------------------------------------------------------------- PNG figures


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _token_labels(tokens: list[str], key: int | None) -> list[str]:
    """``"position token"`` tick labels, the key marked with ``▶``."""
    return [f"{'▶ ' if t == key else ''}{t} {token.strip() or repr(token)}" for t, token in enumerate(tokens)]


def plan_png_base64(pair: PairView) -> str:
    """The pair's ``plan`` ``[n_chosen, n_rejected]`` as a base64 PNG (rows: chosen tokens, columns: rejected), each
    axis labelled with token positions and texts (the key slots marked ``▶`` when known)."""
    if pair.plan is None:
        raise ValueError(f"pair {pair.index} has no plan")
    plt = pyplot()
    rows, cols = pair.plan.shape
    fig, ax = plt.subplots(figsize=(2.5 + 0.3 * cols, 2.0 + 0.3 * rows), dpi=100)
    image = ax.imshow(pair.plan, cmap="Reds", aspect="auto")
    ax.set_yticks(range(rows), _token_labels(pair.chosen_tokens, pair.chosen_key)[:rows], fontsize=8)
    ax.set_xticks(range(cols), _token_labels(pair.rejected_tokens, pair.rejected_key)[:cols], fontsize=8,
                  rotation=90)
    ax.set_ylabel("chosen token (position, text)")
    ax.set_xlabel("rejected token (position, text)")
    fig.colorbar(image, ax=ax, fraction=0.04, label="transported mass")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pair_heatmap_png(pair: PairView, path, title: str = "") -> None:
    """Save one pair's chosen and rejected token weights as a two-row heatmap PNG at ``path``: one colour scale for
    both rows (the colour bar), the key tokens outlined when known."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    width = max(len(pair.chosen_tokens), len(pair.rejected_tokens))
    fig, axes = plt.subplots(2, 1, figsize=(2.0 + 0.55 * width, 2.6), dpi=100)
    for ax, side in zip(axes, ("chosen", "rejected")):
        tokens, weights = getattr(pair, f"{side}_tokens"), getattr(pair, f"{side}_weights")
        row = np.full((1, width), np.nan)
        row[0, :len(weights)] = weights
        image = ax.imshow(row, cmap="Reds", vmin=pair.low, vmax=max(pair.top, pair.low + 1e-9), aspect="auto")
        for x, (token, weight) in enumerate(zip(tokens, weights)):
            ax.text(x, 0, token, ha="center", va="center", fontsize=7, rotation=45,
                    color=_text_colour(pair.share(weight)))
        key = getattr(pair, f"{side}_key")
        if key is not None:
            ax.add_patch(Rectangle((key - 0.5, -0.5), 1, 1, fill=False, edgecolor="tab:blue", linewidth=2.5))
        ax.set_yticks([0], [side])
        ax.set_xticks([])
    fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01, label="weight")
    fig.suptitle(f"{title or pair.prompt}  (weights {pair.low:.3g} … {pair.top:.3g}; key outlined)", fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
