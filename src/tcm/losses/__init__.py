"""Losses for threshold-consistent deep metric learning (``torch.nn.Module``).

* :class:`TCMLoss`: the Threshold-Consistent Margin regulariser (Zhang et al., ICLR 2024).
* :class:`SmoothAPLoss`, :class:`RecallAtKSurrogateLoss`: ranking base losses.
* :func:`build_loss` / :class:`LossWithTCM` / :func:`available_losses`: base loss (ours or
  pytorch-metric-learning's) + TCM by name.
* :class:`CombinedLoss`: weighted named terms with a reference set; :class:`CrossBatchMemory`
  (XBM, Wang et al. 2020) via ``build_loss(..., memory_size=M)``.
* :func:`gather_with_grad`, :func:`gather_no_grad`: all-gather for DDP.

Convention: embeddings are L2-normalised inside every loss; cosine similarity in [-1, 1].
"""

from tcm.losses.distributed import gather_no_grad, gather_with_grad
from tcm.losses.factory import CombinedLoss, LossWithTCM, available_losses, build_loss
from tcm.losses.memory import CrossBatchMemory
from tcm.losses.recall_surrogate import RecallAtKSurrogateLoss
from tcm.losses.smooth_ap import SmoothAPLoss
from tcm.losses.tcm import TCMLoss, tcm_loss_from_similarities

__all__ = [
    "CombinedLoss",
    "CrossBatchMemory",
    "LossWithTCM",
    "RecallAtKSurrogateLoss",
    "SmoothAPLoss",
    "TCMLoss",
    "available_losses",
    "build_loss",
    "gather_no_grad",
    "gather_with_grad",
    "tcm_loss_from_similarities",
]
