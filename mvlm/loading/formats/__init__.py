"""Foreign checkpoint formats (HuggingFace LLaVA, official LLaVA, Mipha / LLaVA-Phi, XTuner): which one a
folder holds, and how to load it as an mvlm model. Each format module exposes
`load(model_path, options) -> (model, tokenizer, image_processor)`.
"""

from mvlm.loading.formats.common import ImportOptions
from mvlm.loading.formats.detect import FORMAT_NAMES, detect_format, load_foreign

__all__ = ["FORMAT_NAMES", "ImportOptions", "detect_format", "load_foreign"]
