"""Which judge layers see the whole judge input: sliding-window layers, the default layer and the length cap.

A sliding-window layer's last query sees only the last ``window`` keys, so a judge input longer than the window loses
its first answer tokens' attention (their weights become 0 or, when a whole answer is outside, the zero-sum
fallback). The default judge layer is therefore the last layer whose window (if any) holds the whole judge input
(Gemma 3 puts sliding layers last), and a chosen layer that cannot hold it gets a warning.
"""

from __future__ import annotations

import logging

from tokenweight.models import config_context
from tokenweight.errors import UserError
from tokenweight.weights.attention.rows import resolve_layers

logger = logging.getLogger(__name__)


def layer_windows(text_config) -> list[int | None]:
    """Per decoder layer, the sliding window of its attention (``None``: the layer sees every earlier token).

    Read from the config as transformers models use it: ``layer_types`` names each layer's kind (a
    ``sliding_attention`` layer has ``sliding_window``, a ``chunked_attention`` one ``attention_chunk_size``); without
    ``layer_types`` a set ``sliding_window`` applies to every layer (Mistral, Mixtral, Phi-3).
    """
    count = text_config.num_hidden_layers
    window = getattr(text_config, "sliding_window", None) or None
    layer_types = getattr(text_config, "layer_types", None)
    if not layer_types:
        return [window] * count
    spans = {"sliding_attention": window, "chunked_attention": getattr(text_config, "attention_chunk_size", None)}
    return [spans.get(kind) for kind in layer_types]


def judge_layers_and_cap(text_config, layers: list[int] | None, max_length: int | None,
                         model_name: str) -> tuple[list[int], int]:
    """The judge layers (resolved indices) and the judge input cap in tokens.

    ``max_length`` ``None``: the model's context, or, when no layer sees the whole context, the largest window (so
    the default layer sees every judged token). ``layers`` ``None``: the last layer whose window holds the cap; a
    chosen layer whose window is shorter than the cap is warned about.
    """
    windows = layer_windows(text_config)
    if max_length is None:
        max_length = config_context(text_config)
        if max_length is None:
            raise UserError(f"the config of {model_name} states no context length (max_position_embeddings); set "
                            "--attention_max_length (the judge input cap in tokens)")
        if all(w is not None and w < max_length for w in windows):
            max_length = max(windows)
    sees_all = [i for i, w in enumerate(windows) if w is None or w >= max_length]
    if layers is None and sees_all:
        return [sees_all[-1]], max_length
    resolved = resolve_layers(layers, len(windows))
    for index in resolved:
        if index not in sees_all:
            logger.warning("attention judge layer %d is a sliding-window layer (window %d) shorter than the judge "
                           "input cap (%d tokens): in a longer judge input its last token does not see the first "
                           "answer tokens%s", index, windows[index], max_length,
                           f"; layer {sees_all[-1]} sees all of it" if sees_all else "")
    return resolved, max_length
