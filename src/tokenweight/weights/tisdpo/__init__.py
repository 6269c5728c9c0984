"""``tisdpo``: TIS-DPO (Liu et al., ICLR 2025, arXiv 2410.04350; code https://github.com/exlaw/TIS-DPO) token
weights from two contrastive models, computed once and cached (specs/related.md §4).

``scheme`` (the registered :class:`TISDPOScheme`, its flags :class:`TISDPOSettings`), ``rewards`` (r̂ = log π₊ −
log π₋ per completion token, in memory or cached), ``cache`` (the fingerprinted reward cache), ``transforms``
(scores → weights as upstream: ``rank_based`` (default), ``threshold_and_scale``, ``binary``; EOS 0).
"""

from tokenweight.weights.tisdpo.rewards import split_rewards, token_rewards
from tokenweight.weights.tisdpo.scheme import TISDPOScheme, TISDPOSettings, resolve_transform
from tokenweight.weights.tisdpo.transforms import PRESETS, TRANSFORMS, Transform, response_weights, stable_ranks

__all__ = ["PRESETS", "TISDPOScheme", "TISDPOSettings", "TRANSFORMS", "Transform", "resolve_transform",
           "response_weights", "split_rewards", "stable_ranks", "token_rewards"]
