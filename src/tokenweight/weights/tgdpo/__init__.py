"""``tgdpo``: TGDPO (Zhu et al., ICML 2025, arXiv 2506.14574; code https://github.com/dvlab-research/TGDPO): a guidance
model trained with DPO scores every token once against the run's reference (cached); DPO then weighs chosen tokens
1 + αβr and rejected tokens 1 − αβr.

``scheme`` (the registered :class:`TGDPOScheme`, its flags :class:`TGDPOSettings`, the :data:`CONTRAST` of its
cached rewards).
"""

from tokenweight.weights.tgdpo.scheme import CONTRAST, TGDPOScheme, TGDPOSettings

__all__ = ["CONTRAST", "TGDPOScheme", "TGDPOSettings"]
