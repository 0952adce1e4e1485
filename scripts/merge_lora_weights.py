"""LLaVA's scripts/merge_lora_weights.py interface over mvlm.convert.merge_lora:

    python scripts/merge_lora_weights.py --model-path LORA_CKPT --model-base BASE --save-model-path OUT
"""

from mvlm.convert.merge_lora import main

if __name__ == "__main__":
    main()
