"""fedgin: fused GIN augmentation and federated CT/MRI segmentation."""
from fedgin.gin import GIN, gin, gin_apply, make_config, warm_up
from fedgin.params import GINConfig, GINParams
from fedgin.reference import reference_apply

__version__ = "0.1.0"
__all__ = ["GIN", "GINConfig", "GINParams", "gin", "gin_apply", "make_config", "reference_apply", "warm_up",
           "__version__"]
