"""LlavaForCausalLM over every supported LLM family and vision tower, and its fusion against a hand computation."""

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from mvlm.model.builder import build_model
from mvlm.model.projector import MlpGeluProjector, build_projector
from mvlm.model.vision import num_image_tokens
from tests.helpers import tiny
from tests.helpers.batches import make_batch


@pytest.mark.parametrize("tower", tiny.VISION_KINDS)
@pytest.mark.parametrize("family", tiny.LLM_FAMILIES)
def test_forward_backward_generate(checkpoints, family, tower):
    model, tokenizer, _ = build_model(checkpoints("llm", family), checkpoints("tower", tower))
    input_ids, labels, pixel_values = make_batch(model, tokenizer)
    output = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
    assert output.logits.shape == (1, input_ids.shape[1], len(tokenizer))
    assert torch.isfinite(output.loss)
    output.loss.backward()
    for name, parameter in model.multi_modal_projector.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    first_tower_weight = next(model.vision_tower.parameters())
    assert first_tower_weight.grad is not None and first_tower_weight.grad.abs().sum() > 0
    new_tokens = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=3, min_new_tokens=3,
                                do_sample=False)
    assert new_tokens.shape == (1, 3)


def test_phi_head_bias_is_kept(checkpoints):
    """Phi-2's LM head has a bias: wrapping the whole causal LM keeps it in the logits."""
    model, tokenizer, _ = build_model(checkpoints("llm", "phi"), checkpoints("tower", "clip"))
    head = model.language_model.lm_head
    assert head.bias is not None and head.bias.abs().sum() > 0
    input_ids, _, pixel_values = make_batch(model, tokenizer)
    hidden = model.language_model.model(inputs_embeds=model.embed_multimodal(input_ids, pixel_values)).last_hidden_state
    expected = hidden @ head.weight.T + head.bias
    assert torch.allclose(model(input_ids=input_ids, pixel_values=pixel_values).logits, expected, atol=1e-5)


@pytest.mark.parametrize("layer", [-2, [-3, -1]])
@pytest.mark.parametrize("tower,strategy", [("clip", "default"), ("clip", "full"), ("siglip", "full"),
                                            ("internvit", "default")])
def test_logits_equal_a_hand_computation(checkpoints, layer, tower, strategy):
    model, tokenizer, _ = build_model(
        checkpoints("llm", "llama"), checkpoints("tower", tower),
        vision_feature_layer=layer, vision_feature_select_strategy=strategy,
    )
    model.eval()
    input_ids, _, pixel_values = make_batch(model, tokenizer, num_images=2)
    # By hand: tower hidden state(s) at the layer -> drop CLS for 'default' -> projector -> scatter -> LM.
    hidden_states = model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    layers = [layer] if isinstance(layer, int) else layer
    start = 1 if strategy == "default" else 0
    features = torch.cat([hidden_states[index][:, start:] for index in layers], dim=-1)
    projector = model.multi_modal_projector
    projected = F.linear(F.gelu(F.linear(features, projector.linear_1.weight, projector.linear_1.bias)),
                         projector.linear_2.weight, projector.linear_2.bias)
    embeddings = model.language_model.get_input_embeddings().weight[input_ids[0]].clone()
    positions = (input_ids[0] == model.config.image_token_id).nonzero().flatten()
    assert len(positions) == projected.shape[0] * projected.shape[1] == 2 * model.num_image_tokens
    embeddings[positions] = projected.reshape(-1, projected.shape[-1])
    expected = model.language_model(inputs_embeds=embeddings[None]).logits
    actual = model(input_ids=input_ids, pixel_values=pixel_values).logits
    assert torch.allclose(actual, expected, atol=1e-5)
    patches = (tiny.IMAGE_SIZE // tiny.PATCH_SIZE) ** 2
    assert model.num_image_tokens == patches + (1 if (strategy == "full" and tower != "siglip") else 0)
    assert projector.linear_1.in_features == tiny.HIDDEN * len(layers)


def test_mismatched_image_token_count_names_both_counts(checkpoints):
    model, tokenizer, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    input_ids, _, pixel_values = make_batch(model, tokenizer)
    short = torch.cat([input_ids[:, :2], input_ids[:, 3:]], dim=1)  # one image token fewer
    with pytest.raises(ValueError, match=r"hold 3 image tokens, but the 1 image\(s\) in pixel_values yield 4"):
        model(input_ids=short, pixel_values=pixel_values)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=input_ids)


def test_text_only_forward_and_generate(checkpoints):
    model, tokenizer, _ = build_model(checkpoints("llm", "qwen2"), checkpoints("tower", "siglip"))
    input_ids = torch.tensor([[5, 6, 7, 8]])
    output = model(input_ids=input_ids, labels=input_ids)
    expected = model.language_model(input_ids=input_ids, labels=input_ids)
    assert torch.allclose(output.logits, expected.logits) and torch.allclose(output.loss, expected.loss)
    assert model.generate(input_ids, max_new_tokens=2, min_new_tokens=2).shape == (1, 2)



def test_kv_cache_passes_through_forward_under_the_installed_name(checkpoints):
    """transformers renamed the cache argument (past_key_values -> cache) and warns on every call given the old
    one: a training forward must not warn, and a cache fed back gives the logits of the whole sequence."""
    model, tokenizer, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    input_ids, labels, pixel_values = make_batch(model, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
        prefix = model(input_ids=input_ids[:, :-1], pixel_values=pixel_values, use_cache=True)
    name = "cache" if "cache" in inspect.signature(model.language_model.forward).parameters else "past_key_values"
    cache = getattr(prefix, name)
    step = model(input_ids=input_ids[:, -1:], attention_mask=torch.ones_like(input_ids), use_cache=True,
                 **{name: cache})
    whole = model(input_ids=input_ids, pixel_values=pixel_values).logits
    assert torch.allclose(step.logits[:, -1], whole[:, -1], atol=1e-5)

def greedy_by_hand(model, input_ids, pixel_values, steps):
    """Greedy decoding with a full forward pass per step, no cache: what generate must reproduce."""
    ids = input_ids
    for _ in range(steps):
        logits = model(input_ids=ids, pixel_values=pixel_values).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, input_ids.shape[1]:]


class Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.flatten().tolist())

    def end(self):
        self.chunks.append("end")


class StopAfter(StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


def test_generate_returns_only_new_tokens_and_supports_decoding_options(checkpoints):
    model, tokenizer, _ = build_model(checkpoints("llm", "gemma"), checkpoints("tower", "clip"))
    model.eval()
    input_ids, _, pixel_values = make_batch(model, tokenizer)
    greedy = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert greedy.tolist() == greedy_by_hand(model, input_ids, pixel_values, 5).tolist()

    streamer = Collect()
    streamed = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=4, min_new_tokens=4,
                              do_sample=False, streamer=streamer)
    assert [token for chunk in streamer.chunks[:-1] for token in chunk][-4:] == streamed[0].tolist()
    assert streamer.chunks[-1] == "end"

    beams = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=4, min_new_tokens=4,
                           num_beams=3, do_sample=False)
    assert beams.shape == (1, 4)

    torch.manual_seed(0)
    sampled_a = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=True,
                               temperature=5.0, top_k=0)
    torch.manual_seed(0)
    sampled_b = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=True,
                               temperature=5.0, top_k=0)
    assert sampled_a.tolist() == sampled_b.tolist()

    stopped = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=10, min_new_tokens=0,
                             do_sample=False, stopping_criteria=StoppingCriteriaList([StopAfter(2)]))
    assert stopped.shape[1] <= 2


def test_projector_registry():
    assert isinstance(build_projector("linear", 8, 16), torch.nn.Linear)
    mlp3 = build_projector("mlp3x_gelu", 8, 16)
    assert isinstance(mlp3, MlpGeluProjector)
    assert [name for name, _ in mlp3.named_parameters()] == [
        f"linear_{index}.{kind}" for index in (1, 2, 3) for kind in ("weight", "bias")
    ]
    features = torch.randn(2, 3, 8)
    expected = mlp3.linear_3(F.gelu(mlp3.linear_2(F.gelu(mlp3.linear_1(features)))))
    assert torch.allclose(mlp3(features), expected)
    assert isinstance(build_projector("mlp1x_gelu", 8, 16).linear_1, torch.nn.Linear)
    assert isinstance(build_projector("identity", 16, 16), torch.nn.Identity)
    with pytest.raises(ValueError, match="needs equal sizes.*8 channels.*16"):
        build_projector("identity", 8, 16)
    for bad in ("mlp2x_relu", "mlp0x_gelu", "xmlp2x_gelu", "MLP2X_GELU"):
        with pytest.raises(ValueError, match="unknown projector type"):
            build_projector(bad, 8, 16)


def test_siglip_refuses_dropping_a_cls_token_it_does_not_have(checkpoints):
    with pytest.raises(ValueError, match="no CLS token"):
        build_model(checkpoints("llm", "llama"), checkpoints("tower", "siglip"), vision_feature_select_strategy="default")


def test_siglip_pooling_head_is_not_built(checkpoints):
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "siglip"))
    assert not any(name.startswith("head.") for name, _ in model.vision_tower.named_parameters())
    assert model.config.vision_feature_select_strategy == "full"


def test_num_image_tokens_by_strategy():
    clip = tiny.vision_config("clip")
    assert num_image_tokens(clip, "default") == 4 and num_image_tokens(clip, "full") == 5


def test_attention_stays_causal(checkpoints):
    """Changing a later token must not change earlier logits (a lost attention setting once broke this)."""
    model, tokenizer, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    assert model.language_model.config._attn_implementation is not None
    input_ids, _, pixel_values = make_batch(model, tokenizer)
    changed = input_ids.clone()
    changed[0, -1] = 9
    logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    changed_logits = model(input_ids=changed, pixel_values=pixel_values).logits
    assert torch.allclose(logits[:, :-1], changed_logits[:, :-1], atol=1e-6)
    assert not torch.allclose(logits[:, -1], changed_logits[:, -1])


def test_anyres_views_each_take_an_image_block(checkpoints):
    from PIL import Image

    from mvlm.data.images import process_images

    model, tokenizer, image_processor = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    pixel_values = process_images([Image.new("RGB", (60, 30))], image_processor, "anyres", [(56, 28)])
    assert pixel_values.shape[:2] == (1, 3)  # global view + 2 tiles
    views = pixel_values.shape[1]
    input_ids = torch.tensor([[tokenizer.bos_token_id] + [model.config.image_token_id] * (views * model.num_image_tokens) + [5]])
    assert model(input_ids=input_ids, pixel_values=pixel_values).logits.shape[1] == input_ids.shape[1]


def test_torch_dtype_and_attention_choice_reach_every_part(checkpoints):
    model, tokenizer, _ = build_model(checkpoints("llm", "qwen2"), checkpoints("tower", "clip"),
                                      torch_dtype=torch.bfloat16, attn_implementation="eager")
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert model.language_model.config._attn_implementation == "eager"
    assert model.vision_tower.config._attn_implementation == "eager"
    input_ids, labels, pixel_values = make_batch(model, tokenizer)
    output = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
    assert output.logits.dtype == torch.bfloat16 and torch.isfinite(output.loss)
