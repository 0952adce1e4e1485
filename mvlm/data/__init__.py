"""Data: LLaVA conversations to exact ids and labels, and images to pixel values."""

from mvlm.data.images import ImageError, load_image, process_images
from mvlm.data.tokenize import SampleError, tokenize_prompt, tokenize_sample

__all__ = ["ImageError", "SampleError", "load_image", "process_images", "tokenize_prompt", "tokenize_sample"]
