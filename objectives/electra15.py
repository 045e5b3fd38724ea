"""ELECTRA 15%: replaced token detection with the discriminator loss on the masked positions only.

The paper's ablation (section 3.2, Table 5: GLUE 82.4 vs 85.0 for ELECTRA) that shows much of
ELECTRA's gain comes from learning from all input tokens rather than a 15% subset.
"""

from __future__ import annotations

from torch import Tensor

from objectives.generator import Corruption
from objectives.rtd import ReplacedTokenDetection


class Electra15(ReplacedTokenDetection):
    """ELECTRA with the discriminator loss restricted to the chosen (masked) positions.

    Args:
        size: discriminator size preset: ``tiny``, ``small``, ``base`` or ``large``.
        **kwargs: every setting of :class:`objectives.rtd.ReplacedTokenDetection`.
    """

    def __init__(self, size: str = "small", **kwargs):
        super().__init__(size=size, **kwargs)

    def disc_loss_mask(self, batch: dict[str, Tensor], corruption: Corruption) -> Tensor:
        return corruption.masked.chosen
