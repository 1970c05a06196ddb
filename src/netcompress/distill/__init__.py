"""Knowledge distillation: the losses (:mod:`.losses`) and fine-tuning with them (:mod:`.finetune`)."""

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
    soft_cross_entropy,
)

__all__ = ["AttentionTransfer", "Batch", "FeatureTaps", "Hint", "InterRegionAffinity", "Logits", "SelfAttention",
           "accuracy", "attention_map", "codistill", "codistillation_losses", "finetune", "soft_cross_entropy"]
