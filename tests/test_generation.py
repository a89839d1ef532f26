"""toolkit.generation: the shared prompt prefix is read once, and the completions are those of plain `generate`;
in the loss pass, the log-probabilities and gradients are those of the plain forward."""

import pytest
import torch

from toolkit.generation import (
    MIN_SHARED_TOKENS,
    generate_sharing_prefix,
    share_prompt_forward,
    share_prompt_prefill,
    shared_columns,
    shared_prefix_length,
)
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


def test_shared_columns_need_the_same_token_and_no_padding():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 1, 9]])
    assert shared_columns(ids, torch.ones_like(ids)) == 2
    assert shared_columns(ids[:2], torch.ones_like(ids[:2])) == 3
    assert shared_columns(ids[:1], torch.ones_like(ids[:1])) == 4
    # Left-padded prompts of different lengths: the first column is padding, nothing is shared.
    assert shared_columns(*left_padded([5, 6, 7], [5, 6, 7, 8])) == 0


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


def plain_and_shared(model, ids, mask, **settings):
    """Plain `generate`'s output, `generate_sharing_prefix`'s, and the prefills the latter ran."""
    plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
    sizes = PrefillSizes(model)
    try:
        out = generate_sharing_prefix(model, ids, mask, **settings)
    finally:
        sizes.handle.remove()
    return plain, out, sizes.seen


def test_greedy_completions_equal_plain_generate(model_and_prompts):
    model, tokenizer, batch = model_and_prompts
    ids, mask = batch["input_ids"], batch["attention_mask"]
    shared = shared_prefix_length(ids, mask)
    assert shared >= MIN_SHARED_TOKENS  # the system message and the worked example
    plain, out, seen = plain_and_shared(model, ids, mask, max_new_tokens=12, do_sample=False, temperature=None,
                                        top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(out, plain)
    # The prefix once at batch size 1, then every row's own tokens, none of the prefix again.
    assert seen == [(1, shared), (3, ids.shape[1] - shared)]


def test_a_cache_implementation_goes_to_plain_generate(model_and_prompts):
    # TRL passes training.trl.cache_implementation in its GenerationConfig; transformers refuses it together with
    # the shared prefix's past_key_values, so such a batch must be generated as it was asked.
    from transformers import GenerationConfig

    model, tokenizer, batch = model_and_prompts
    config = GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, cache_implementation="static")
    plain = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           generation_config=config)
    out = generate_sharing_prefix(model, batch["input_ids"], batch["attention_mask"], generation_config=config)
    assert torch.equal(out, plain)


@pytest.mark.parametrize("setting", [{"use_cache": False}, {"return_dict_in_generate": True}])
def test_no_cache_or_a_dict_output_goes_to_plain_generate(model_and_prompts, setting):
    # Without a cache generate reads each row from its first column again, the prefix moved before the pads
    # (other completions); a dict output has no columns to put the prompts back into (a TypeError).
    model, tokenizer, batch = model_and_prompts
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain, out, seen = plain_and_shared(model, ids, mask, max_new_tokens=4, do_sample=False, temperature=None,
                                        top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, **setting)
    if setting.get("return_dict_in_generate"):
        plain, out = plain.sequences, out.sequences
    assert torch.equal(out, plain)
    assert seen[0] == tuple(ids.shape)  # the whole batch, as plain generate reads it


@pytest.mark.parametrize("setting", [{"no_repeat_ngram_size": 2}, {"bad_words_ids": [[9, 10]]},
                                     {"sequence_bias": {(9, 10): -5.0}}])
def test_a_filter_on_token_sequences_goes_to_plain_generate(model_and_prompts, setting):
    # n-gram bans read the whole row, pads included: moving the pads after the shared prefix would make n-grams
    # (and banned-sequence tails) the plain batch does not have, and so other completions.
    model, tokenizer, batch = model_and_prompts
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain, out, seen = plain_and_shared(model, ids, mask, max_new_tokens=8, do_sample=False, temperature=None,
                                        top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, **setting)
    assert torch.equal(out, plain)
    assert seen == [tuple(ids.shape)]  # one prefill of the whole batch, as plain generate does


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


def test_the_loss_pass_reads_the_prompt_once_with_the_same_logps_and_gradients(model_and_prompts):
    """TRL's GRPO loss: one forward and backward over [prompt | completion] of a group; shared, the prompt goes
    through once and the completions' log-probabilities and the adapter's gradients are those of the plain pass."""
    from peft import LoraConfig, get_peft_model

    base, tokenizer, batch = model_and_prompts
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                            task_type="CAUSAL_LM"))
    try:
        for name, param in model.named_parameters():
            if "lora_B" in name:  # zero at init: give the adapter something to differentiate
                torch.nn.init.normal_(param, std=0.02)
        padding = int((batch["attention_mask"][0] == 0).sum())
        prompt = batch["input_ids"][:1, padding:].repeat(4, 1)
        completion = torch.randint(100, 10_000, (4, 8))
        completion_mask = torch.ones_like(completion)
        completion_mask[1, 5:] = completion_mask[3, 2:] = 0  # right-padded, as TRL pads completions
        ids = torch.cat([prompt, completion], dim=1)
        mask = torch.cat([torch.ones_like(prompt), completion_mask], dim=1)
        keep = completion.shape[1] + 1  # TRL asks for one more logit than completion tokens

        def loss_pass():
            model.zero_grad()
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
            (-(logps * completion_mask).sum() / completion_mask.sum()).backward()
            grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
            return logps.detach(), grads

        plain_logps, plain_grads = loss_pass()
        share_prompt_forward(model)
        assert "forward" in vars(model) and "forward" not in vars(base)  # this object only
        sizes = PrefillSizes(model)
        try:
            shared_logps, shared_grads = loss_pass()
            # Any other call (here generation's, with a cache) is transformers' forward, all rows at once.
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, use_cache=True)
        finally:
            sizes.handle.remove()
        # The prompt but its last token, whose logit scores the first completion token and so must be recomputed.
        assert sizes.seen == [(1, ids.shape[1] - keep), (4, keep), (4, ids.shape[1])]
        torch.testing.assert_close(shared_logps, plain_logps, rtol=1e-4, atol=1e-4)
        assert plain_grads and all(g.abs().sum() > 0 for g in plain_grads)
        for shared_grad, plain_grad in zip(shared_grads, plain_grads, strict=True):
            torch.testing.assert_close(shared_grad, plain_grad, rtol=1e-3, atol=1e-6)
        # Gradient checkpointing recomputes layers without a cache: the plain pass.
        model.gradient_checkpointing_enable()
        sizes = PrefillSizes(model)
        try:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False)
        finally:
            sizes.handle.remove()
            model.gradient_checkpointing_disable()
        assert sizes.seen == [(4, ids.shape[1])]
    finally:
        model.unload()
