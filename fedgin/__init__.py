"""fedgin: fused GIN augmentation and federated CT/MRI segmentation."""
from fedgin.gin import GIN, check_errors, gin, gin_apply, gin_views, make_config, warm_up
from fedgin.params import GINConfig, GINParams
from fedgin.reference import reference_apply

__version__ = "0.1.0"
__all__ = ["GIN", "GINConfig", "GINParams", "check_errors", "gin", "gin_apply", "gin_views", "make_config",
           "reference_apply", "warm_up", "__version__"]
