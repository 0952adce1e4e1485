"""Install mvlm: train small LLaVA-style vision-language models on any HuggingFace causal LM."""

from setuptools import find_packages, setup

setup(
    name="mvlm",
    version="0.1.0",
    description="Train, chat with, evaluate and export small LLaVA-style multimodal models.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mvlm", "mvlm.*"]),
    install_requires=[
        "torch>=2.1",
        # 5.9 changed the CLIP/SigLIP vision key layout, and only from 5.18 on do the Auto image processors
        # work without torchvision (mvlm uses the PIL ones); tested on 5.18.0 and 5.23.0. 6.x is untested.
        "transformers>=5.18,<6",
        "accelerate>=1.0",
        "peft>=0.13",
        "datasets>=3.0",
        "safetensors>=0.4",
        "pillow>=10.0",
        "tokenizers>=0.20",
        "sentencepiece>=0.2",
        "numpy>=1.24",
        "tqdm>=4.60",
        "pandas>=1.5",  # MMBench .tsv files (mvlm.eval.model_vqa_mmbench and its scorer)
    ],
    extras_require={
        "train": ["deepspeed>=0.15"],
        "gpu": ["flash-attn>=2.5", "bitsandbytes>=0.43"],
        # Gradio: tested on 6.x (its chat components change between majors, which broke LLaVA's UI each time).
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27", "openai>=1.40", "gradio>=6.0,<7"],
        "dev": ["pytest>=8.0", "pytest-timeout>=2.3", "bitsandbytes>=0.45", "import-linter>=2.0", "openai>=1.40",
                "selenium>=4.20"],
    },
)
