"""Values shared by the data pipeline, the model and the tools, kept in one place so they cannot drift."""

IGNORE_INDEX = -100
"""Label value that the loss skips (the default `ignore_index` of PyTorch's cross-entropy)."""

DEFAULT_IMAGE_TOKEN = "<image>"
"""Placeholder users write in prompts; a real special token of the tokenizer, expanded to one token per feature."""

MVLM_MODEL_TYPE = "mvlm_llava"
"""`model_type` of mvlm checkpoints: `import mvlm.model` registers it with AutoConfig and AutoModelForCausalLM."""

LLAVA_SELECT_FEATURES = ("patch", "cls_patch")
"""LLaVA's `mm_vision_select_feature` values: drop the tower's CLS token, or keep it."""
