"""The comparison methods of FedGIN's evaluation behind one small interface (``make_augmentation(name, ...)``),
plus the training-side pieces some of them need (consistency and reconstruction losses, a reconstruction head,
domain-specific normalization). Sources of every default: docs/methods.md and each module's docstring."""
from fedgin.augment.base import AUGMENTATIONS, Augmentation, NoAugmentation, make_augmentation, register
from fedgin.augment.dsbn import (
    DomainSpecificBatchNorm2d,
    DomainSpecificBatchNorm3d,
    DomainSpecificNorm,
    aggregate_dsbn,
    convert_to_dsbn,
    dsbn_state_keys,
    set_domain,
    use_domain,
)
from fedgin.augment.frequency import FMAug, RaffeSDG, butterworth_gain, butterworth_highpass, high_frequency_target
from fedgin.augment.gin_ipa import GINIPA, GINAugmentation, gin_ipa_views
from fedgin.augment.heads import HighFreqReconstructionHead
from fedgin.augment.losses import high_frequency_loss, kl_consistency
from fedgin.augment.masks import ipa_mask, mix_mask
from fedgin.augment.pro_randconv import ProRandConv, ProRandConvBlock, deformable_conv
from fedgin.augment.randconv import RandConv, random_conv
from fedgin.augment.semantic import SemanticRandConv, semantic_random_conv

__all__ = [
    "AUGMENTATIONS", "Augmentation", "DomainSpecificBatchNorm2d", "DomainSpecificBatchNorm3d", "DomainSpecificNorm",
    "FMAug", "GINAugmentation", "GINIPA", "HighFreqReconstructionHead", "NoAugmentation", "ProRandConv",
    "ProRandConvBlock", "RaffeSDG", "RandConv", "SemanticRandConv", "aggregate_dsbn", "butterworth_gain",
    "butterworth_highpass", "convert_to_dsbn", "deformable_conv", "dsbn_state_keys", "gin_ipa_views",
    "high_frequency_loss", "high_frequency_target", "ipa_mask", "kl_consistency", "make_augmentation", "mix_mask",
    "random_conv", "register", "semantic_random_conv", "set_domain", "use_domain",
]
