"""``support`` under I-alternation (Huang et al. 2017, section 4.1, Eq. 38) in the Sparse step.

The run estimates every training example's support at the start of each Sparse epoch and trains with
them fixed (``run.sparse_phase.SparsePhase.before_epoch``, ``alternation.estimate_instance_supports``); that
estimation records the same per-channel statistics as B-alternation, one observation per example. The
decision is then the B-alternation criterion's, on those statistics.
"""

from __future__ import annotations

from supportprune.method.criteria.support_batch import BatchSupportCriterion


class InstanceSupportCriterion(BatchSupportCriterion):
    alternation = "instance"
