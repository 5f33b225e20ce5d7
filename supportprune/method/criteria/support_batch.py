"""``support`` under B-alternation (the paper's criterion, Huang et al. 2017, section 4.2, Eq. 41).

In the Sparse step every site masks each mini-batch by its batch support and records, per channel, how
its support behaved (``SupportSite._record``). At an alternation point the channels are scored by one of
those statistics (``sparse.support_statistic``, see ``support_statistics``); nothing else is observed:
the statistics live in the sites' buffers, so the model's checkpoint carries them.
"""

from __future__ import annotations

from torch import Tensor, nn

from supportprune.method.criteria.base import Criterion
from supportprune.method.criteria.support_statistics import support_statistic


class BatchSupportCriterion(Criterion):
    name = "support"
    alternation = "batch"

    def __init__(self, statistic: str = "max_energy") -> None:
        self.statistic = statistic

    def scores(self, model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
        return support_statistic(model, example_input, self.statistic)
