"""toolkit.generation: the shared prompt prefix is read once, and the completions are those of plain `generate`."""

import pytest
import torch

from toolkit.generation import MIN_SHARED_TOKENS, generate_sharing_prefix, share_prompt_prefill, shared_prefix_length
from toolkit.models import load_model, resolve_model
from toolkit.prompts import build_messages
from toolkit.recipe import load_recipe

PAD = 0


def left_padded(*rows):
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_shared_prefix_of_a_left_padded_batch():
    ids, mask = left_padded([5, 6, 7, 8, 9], [5, 6, 7, 1], [5, 6, 2, 3, 4, 4])
    assert shared_prefix_length(ids, mask) == 2
    # Identical rows (a GRPO group): all but the last token, which generate must still feed.
    ids, mask = left_padded([5, 6, 7], [5, 6, 7])
    assert shared_prefix_length(ids, mask) == 2
    # One row is the start of another: the shorter keeps one token of its own.
    ids, mask = left_padded([5, 6, 7], [5, 6, 7, 8])
    assert shared_prefix_length(ids, mask) == 2
    assert shared_prefix_length(*left_padded([1, 2], [3, 4])) == 0


def test_right_padding_shares_nothing():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert shared_prefix_length(ids, mask) == 0


@pytest.fixture(scope="module")
def model_and_prompts():
    recipe = load_recipe("recipes/wine.yaml")
    model, tokenizer = load_model(resolve_model(recipe.model.name_or_path), "float32")
    chats = [
        build_messages(recipe.prompt, "Which grape is Barolo made from?",
                       ["Nebbiolo is a red grape from Piedmont, where it makes Barolo and Barbaresco."]),
        build_messages(recipe.prompt, "Which river does the Mosel follow?",
                       ["The Mosel is a German wine region along the Mosel River, known for steep slate slopes."]),
        build_messages(recipe.prompt, "Where is Jerez?", ["Jerez is in Andalusia."]),
    ]
    batch = tokenizer.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, padding=True,
                                          return_tensors="pt", return_dict=True)
    return model, tokenizer, batch


class PrefillSizes:
    """(batch, tokens) of each forward pass that reads more than one token: the prefills."""

    def __init__(self, model):
        self.seen = []
        self.handle = model.get_decoder().register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        shape = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
        if shape[1] > 1:
            self.seen.append(tuple(shape))


def test_greedy_completions_equal_plain_generate(model_and_prompts):
    model, tokenizer, batch = model_and_prompts
    ids, mask = batch["input_ids"], batch["attention_mask"]
    shared = shared_prefix_length(ids, mask)
    assert shared >= MIN_SHARED_TOKENS  # the system message and the worked example
    settings = dict(max_new_tokens=12, do_sample=False, temperature=None, top_p=None, top_k=None,
                    pad_token_id=tokenizer.pad_token_id)
    plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
    sizes = PrefillSizes(model)
    try:
        out = generate_sharing_prefix(model, ids, mask, **settings)
    finally:
        sizes.handle.remove()
    assert torch.equal(out, plain)
    # The prefix once at batch size 1, then every row's own tokens, none of the prefix again.
    assert sizes.seen == [(1, shared), (3, ids.shape[1] - shared)]


def test_a_wrapped_model_samples_a_group_as_before(model_and_prompts):
    """What TRL does each step: num_generations copies of one prompt, sampled; same seed, same tokens."""
    from peft import LoraConfig, get_peft_model

    base, tokenizer, batch = model_and_prompts
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    try:
        ids, mask = batch["input_ids"][:1].repeat(4, 1), batch["attention_mask"][:1].repeat(4, 1)
        ids, mask = ids[:, (mask[0] == 0).sum():], mask[:, (mask[0] == 0).sum():]  # the group: no padding
        settings = dict(max_new_tokens=10, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                        pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
        share_prompt_prefill(model)
        assert "generate" in vars(model) and "generate" not in vars(base)  # this object only
        sizes = PrefillSizes(model)
        torch.manual_seed(0)
        try:
            shared = model.generate(input_ids=ids, attention_mask=mask, **settings)
        finally:
            sizes.handle.remove()
        assert torch.equal(shared, plain)
        assert sizes.seen == [(1, ids.shape[1] - 1)]
    finally:
        model.unload()  # the module-scoped base model goes back to the other tests without LoRA layers
