"""Register mvlm's config and model with transformers' Auto classes (runs on `import mvlm.model`).

After this, `AutoConfig.from_pretrained` and `AutoModelForCausalLM.from_pretrained` open mvlm
checkpoints with no `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from mvlm.constants import MVLM_MODEL_TYPE
from mvlm.model.configuration import MvlmLlavaConfig
from mvlm.model.modeling import LlavaForCausalLM

AutoConfig.register(MVLM_MODEL_TYPE, MvlmLlavaConfig, exist_ok=True)
AutoModelForCausalLM.register(MvlmLlavaConfig, LlavaForCausalLM, exist_ok=True)
