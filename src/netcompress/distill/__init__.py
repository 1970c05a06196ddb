"""Knowledge distillation: the losses (:mod:`.losses`), fine-tuning with them (:mod:`.finetune`), and
low-rank regularization during fine-tuning (:mod:`.regularize`)."""

from netcompress.distill.finetune import accuracy, codistill, finetune
from netcompress.distill.losses import (
    AttentionTransfer,
    Batch,
    FeatureTaps,
    Hint,
    InterRegionAffinity,
    Logits,
    SelfAttention,
    attention_map,
    codistillation_losses,
    ensemble_probabilities,
    soft_cross_entropy,
)
from netcompress.distill.regularize import NuclearNorm, effective_rank, effective_ranks, singular_value_threshold

__all__ = ["AttentionTransfer", "Batch", "FeatureTaps", "Hint", "InterRegionAffinity", "Logits", "NuclearNorm",
           "SelfAttention", "accuracy", "attention_map", "codistill", "codistillation_losses", "effective_rank",
           "effective_ranks", "ensemble_probabilities", "finetune", "singular_value_threshold", "soft_cross_entropy"]
