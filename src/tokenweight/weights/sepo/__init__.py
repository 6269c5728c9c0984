"""``sepo``: SePO (Yang et al., EMNLP 2025, arXiv 2408.13518; code https://github.com/SteveKGYang/SePO): a DPO-trained
oracle scores every token once (cached), the top tokens of chosen and the bottom of rejected responses are kept, and
a reference-free loss trains on them.

``scheme`` (the registered :class:`SePOScheme`, its flags :class:`SePOSettings`), ``selection`` (upstream's top-k).
"""

from tokenweight.weights.sepo.scheme import CONTRAST, SePOScheme, SePOSettings
from tokenweight.weights.sepo.selection import selected_tokens

__all__ = ["CONTRAST", "SePOScheme", "SePOSettings", "selected_tokens"]
