"""Interop with the checkpoint formats users go to, and conversions between mvlm folders.

Reading foreign folders (HuggingFace LLaVA, official LLaVA, Mipha / LLaVA-Phi, XTuner) is
`mvlm.loading`'s job; `python -m mvlm.convert.to_mvlm` writes any of them as an mvlm checkpoint.
Export: `python -m mvlm.convert.to_hf` writes a `LlavaForConditionalGeneration` checkpoint.
llama.cpp and ollama: `python -m mvlm.convert.to_gguf` (llama.cpp's own converters, run from its source tree).
LoRA: `python -m mvlm.convert.merge_lora`; projector: `python -m mvlm.convert.extract_projector`.
"""
