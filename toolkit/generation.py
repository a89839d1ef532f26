"""Generation and the GRPO loss pass, reading the prompt tokens all rows of a batch share through the model once.

Every prompt of a recipe starts with the same system message and worked examples (133 tokens of the wine
recipe's ~270), and a GRPO step samples its group from copies of one prompt. On a CPU the prompt's forward pass
(prefill) is compute-bound, so the copies cost: 4 × 270 prompt tokens took 3.4 s of a 9 s generation on 2 cores.
`generate_sharing_prefix` runs the common prefix once at batch size 1, copies its KV cache to every row, and lets
`generate` continue from there with each row's own tokens.

The batch keeps its length: [shared prefix | left-padded rest of each prompt]. Positions come from the attention
mask (transformers numbers tokens by its cumulative sum), so a padded gap after the prefix changes no position and
no attention; completions match plain `generate` up to float rounding.

The GRPO loss reads the same prompt again: TRL scores each group's completions with one forward and backward pass
over [prompt | completion] for every row. `share_prompt_forward` makes that pass read the rows' common prefix once
too (4 × 318 tokens forward and backward took 4.7 s on 2 cores; shared, 2.5 s, the same log-probabilities and
gradients up to float rounding): the prefix runs at batch size 1, its KV cache (still attached to the graph) is
copied to every row, and the rest of each row runs against it, so the gradient through the prefix is the sum
over the rows, as it is when each row computes it.
"""

from __future__ import annotations

import functools

# Below this many shared tokens a second forward pass costs about what it saves.
MIN_SHARED_TOKENS = 16


def shared_prefix_length(input_ids, attention_mask) -> int:
    """Tokens every row of a left-padded batch starts with (0 if the batch is not left-padded). At least one token
    of the shortest row is left out: `generate` needs an uncached token to start from."""
    import torch

    lengths = attention_mask.sum(dim=1)
    width = input_ids.shape[1]
    # Left padding: each row's mask is zeros then ones.
    expected = torch.arange(width, device=attention_mask.device).unsqueeze(0) >= (width - lengths).unsqueeze(1)
    if not torch.equal(attention_mask.bool(), expected):
        return 0
    shortest = int(lengths.min())
    rows = torch.stack([input_ids[i, width - int(n) : width - int(n) + shortest] for i, n in enumerate(lengths)])
    return min(_leading_run((rows == rows[:1]).all(dim=0)), shortest - 1)


def _leading_run(same) -> int:
    # How many leading entries of a vector of per-column flags are True.
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else len(same)


SEQUENCE_FILTERS = ("no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "stop_strings")


def generate_sharing_prefix(model, input_ids, attention_mask, *, generate=None, **generate_kwargs):
    """`model.generate(input_ids=..., attention_mask=..., **generate_kwargs)` for a left-padded batch, with the
    prompt prefix all rows share computed once. Returns what `generate` returns: the prompts as given, then the
    completions. Batches with one row, a short shared prefix, beams, several sequences per prompt, a cache of
    their own, no cache (`use_cache=False`), a dict output (`return_dict_in_generate`) or a filter on token
    sequences (`SEQUENCE_FILTERS`) go to plain `generate`. `generate`: the generate function to call (default
    `model.generate`)."""
    import torch
    from transformers import DynamicCache

    generate = generate or model.generate

    config = generate_kwargs.get("generation_config") or model.generation_config
    plain = (
        input_ids.shape[0] < 2
        or "past_key_values" in generate_kwargs
        or generate_kwargs.get("cache_implementation") or config.cache_implementation  # e.g. TRL's "static"
        or (generate_kwargs.get("num_beams") or config.num_beams or 1) > 1
        or (generate_kwargs.get("num_return_sequences") or config.num_return_sequences or 1) > 1
        # Without a cache generate reads every row from its first column again, not after the cached prefix; and
        # a dict output (scores, logits) is not a tensor this function can put the prompts back into.
        or generate_kwargs.get("use_cache", config.use_cache) is False
        or generate_kwargs.get("return_dict_in_generate", config.return_dict_in_generate)
        # Filters that read token sequences, not single tokens: the pads moved between prefix and own tokens
        # would make n-grams (and a banned sequence's tail) that the plain batch does not have.
        or any(generate_kwargs.get(key) or getattr(config, key, None) for key in SEQUENCE_FILTERS)
    )
    shared = 0 if plain else shared_prefix_length(input_ids, attention_mask)
    if shared < MIN_SHARED_TOKENS:
        return generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

    batch, width = input_ids.shape
    lengths = attention_mask.sum(dim=1)
    first = width - int(lengths[0])
    prefix = input_ids[:1, first : first + shared]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=prefix, attention_mask=torch.ones_like(prefix), past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(batch)

    # Each row's own tokens stay where they were, right-aligned; the prefix moves to the front. The gap between
    # holds the row's pad token (a padded row starts with one), masked.
    ids = input_ids[:, :1].repeat(1, width)
    mask = torch.zeros_like(attention_mask)
    ids[:, :shared], mask[:, :shared] = prefix, 1
    for i, n in enumerate(lengths.tolist()):
        own = n - shared
        ids[i, width - own :], mask[i, width - own :] = input_ids[i, width - own :], 1
    out = generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **generate_kwargs)
    return torch.cat([input_ids, out[:, width:]], dim=1)


def share_prompt_prefill(model) -> None:
    """Make this model's `generate` share the prompt prefix of its batches (TRL's GRPOTrainer calls
    `model.generate(input_ids=..., attention_mask=..., generation_config=...)` for each group of samples). Only
    this object changes: its class and every other model keep transformers' `generate`."""
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        if args or kwargs.get("input_ids") is None or kwargs.get("attention_mask") is None:
            return original(*args, **kwargs)
        return generate_sharing_prefix(model, generate=original, **kwargs)

    model.generate = generate


def shared_columns(input_ids, attention_mask) -> int:
    """Leading columns where every row has the same token and no padding (a batch of one prompt's completions
    shares its whole prompt; a batch of left-padded different prompts shares nothing)."""
    return _leading_run((input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0))


def forward_sharing_prefix(model, input_ids, attention_mask, logits_to_keep, *, forward):
    """`forward(input_ids=..., attention_mask=..., logits_to_keep=..., use_cache=False)` (the call TRL's loss
    makes), with the columns all rows share run once. Returns that call's output, whose `logits` are those of the
    last `logits_to_keep` positions; None when too little is shared to be worth a second pass."""
    from transformers import DynamicCache

    if input_ids.shape[0] < 2:
        return None
    # The rest of the batch must hold every position whose logits are wanted.
    shared = min(shared_columns(input_ids, attention_mask), input_ids.shape[1] - logits_to_keep)
    if shared < MIN_SHARED_TOKENS:
        return None
    cache = DynamicCache(config=model.config)
    forward(input_ids=input_ids[:1, :shared], attention_mask=attention_mask[:1, :shared], past_key_values=cache,
            use_cache=True)
    cache.batch_repeat_interleave(input_ids.shape[0])
    # No position ids are passed either way: both calls number the tokens by their column, as the full pass does.
    return forward(input_ids=input_ids[:, shared:], attention_mask=attention_mask, past_key_values=cache,
                   use_cache=True, logits_to_keep=logits_to_keep)


def share_prompt_forward(model) -> None:
    """Make this model's forward pass share the prompt its rows have in common when it is called the way TRL's
    GRPO loss calls it (`input_ids`, `attention_mask`, `logits_to_keep`, `use_cache=False`, nothing else). Any
    other call, and every other model, runs transformers' forward unchanged. Not with gradient checkpointing,
    which recomputes layers without a cache."""
    original = model.forward
    loss_call = {"input_ids", "attention_mask", "logits_to_keep", "use_cache"}

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if (not args and set(kwargs) == loss_call and kwargs["use_cache"] is False
                and isinstance(kwargs["logits_to_keep"], int) and kwargs["logits_to_keep"] > 0
                and not getattr(model, "is_gradient_checkpointing", False)):
            out = forward_sharing_prefix(model, kwargs["input_ids"], kwargs["attention_mask"],
                                         kwargs["logits_to_keep"], forward=original)
            if out is not None:
                return out
        return original(*args, **kwargs)

    model.forward = forward
