"""Reading model folders: what a folder holds, the one loader, the foreign formats, training's start.

Layer: above `mvlm.model` and `mvlm.data`, below `mvlm.inference` and the front ends.
"""

from mvlm.loading.kinds import checkpoint_kind, is_full_checkpoint
from mvlm.loading.loader import LoadedModel, load_model, load_pretrained_model

__all__ = ["LoadedModel", "checkpoint_kind", "is_full_checkpoint", "load_model", "load_pretrained_model"]
