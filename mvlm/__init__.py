"""mvlm: train, chat with, evaluate and export small LLaVA-style vision-language models."""

from mvlm.model import LlavaForCausalLM, MvlmLlavaConfig, build_model, load_pretrained_model, save_checkpoint

__version__ = "0.1.0"
__all__ = ["LlavaForCausalLM", "MvlmLlavaConfig", "build_model", "load_pretrained_model", "save_checkpoint"]
