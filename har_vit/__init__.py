"""har_vit: human-activity recognition from WISDM accelerometer logs with a patch-merging 1D ViT."""
from har_vit.core.errors import HarVitError

__version__ = "0.1.0"
__all__ = ["HarVitError", "__version__"]
