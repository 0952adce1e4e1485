"""Interop with the checkpoint formats users come from and go to.

Import: `mvlm.model.builder.load_pretrained_model` reads HuggingFace LLaVA, official LLaVA, Mipha /
LLaVA-Phi and XTuner folders directly (`mvlm.convert.formats` decides which, from the folder's config
and files); `python -m mvlm.convert.to_mvlm` writes any of them as an mvlm checkpoint.
Export: `python -m mvlm.convert.to_hf` writes a `LlavaForConditionalGeneration` checkpoint.
LoRA: `python -m mvlm.convert.merge_lora`; projector: `python -m mvlm.convert.extract_projector`.
"""
