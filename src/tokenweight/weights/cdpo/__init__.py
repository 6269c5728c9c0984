"""``cdpo``: cDPO (Lin et al., arXiv 2411.19943; code https://github.com/chenzhiling9954/Critical-Tokens-Matter): two
models contrast each token once (cached); DPO then weighs a rejected token 1 − p_t.

``scheme`` (the registered :class:`CDPOScheme`, its flags :class:`CDPOSettings`, :func:`side_weights`), ``scores``
(the contrastive estimate and its cache).
"""

from tokenweight.weights.cdpo.scheme import CDPOScheme, CDPOSettings, side_weights
from tokenweight.weights.cdpo.scores import CONTRAST, contrast_probs

__all__ = ["CDPOScheme", "CDPOSettings", "CONTRAST", "contrast_probs", "side_weights"]
