"""The LLaVA-style model: config, modeling, tower and projector registries, and building a fresh one."""

from mvlm.model import auto  # noqa: F401  (registers the Auto classes)
from mvlm.model.builder import build_model, save_checkpoint
from mvlm.model.configuration import MvlmLlavaConfig
from mvlm.model.modeling import LlavaForCausalLM

__all__ = ["LlavaForCausalLM", "MvlmLlavaConfig", "build_model", "save_checkpoint"]
