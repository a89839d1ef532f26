"""The registry: ``REWARDS`` (name → reward), ``build_reward`` (recipe entry → checked, bound TRL reward function)
and ``BoundReward``, the wrapper that turns a reward's misbehaviour into an error naming the reward and sample.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from toolkit.models import ModelError
from toolkit.report import plural
from toolkit.rewards import builtin, custom, model_based
from toolkit.rewards.completions import completion_text, with_prefix

logger = logging.getLogger(__name__)

Reward = Callable[..., list[float | None]]

# A plain dict: a function takes its params as keyword arguments on every call; a class (the model-based
# rewards) takes them once in __init__ and keeps its model between calls.
REWARDS: dict[str, Callable[..., Any]] = {
    "answer_match": builtin.answer_match,
    "format": builtin.format_reward,
    "reasoning_match": builtin.reasoning_match,
    "no_example_copy": builtin.no_example_copy,
    "context_grounding": builtin.context_grounding,
    "length": builtin.length,
    "repetition": builtin.repetition,
    "semantic_match": model_based.SemanticMatch,
    "reward_model": model_based.RewardModel,
}
MODEL_BASED = frozenset({"semantic_match", "reward_model"})
_VALIDATORS: dict[str, Callable[..., None]] = {
    "answer_match": builtin.check_answer_match, "format": builtin.check_format,
    "length": builtin.check_length, "repetition": builtin.check_repetition,
    "reasoning_match": builtin.check_reasoning_match}
# Filled in by TRL (or the evaluator) from the batch: a recipe binding one would silently shadow data.
DATASET_COLUMNS = frozenset({
    "completions", "prompts", "completion_ids", "answer", "aliases", "context", "question", "context_ids",
    "source", "context_sources", "trainer_state", "log_extra", "log_metric", "environments", "completion_prefix",
    "examples"})


class RewardError(RuntimeError):
    """A reward raised, returned NaN/inf or the wrong number of values; the message names reward and sample."""


def _lookup(name: Any) -> Callable[..., Any]:
    if isinstance(name, str) and name in REWARDS:
        return REWARDS[name]
    if isinstance(name, str) and custom.is_custom(name):
        return custom.load_custom(name)
    close = difflib.get_close_matches(name, REWARDS, n=1) if isinstance(name, str) else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown reward {name!r}; {hint}known: {', '.join(sorted(REWARDS))} "
                     f"(or a custom 'package.module:function' / 'path/to/file.py:function')")


def _own_params(fn: Callable[..., Any], custom_fn: bool = False) -> dict[str, Any]:
    """Params a recipe may set, with their defaults (``inspect.Parameter.empty`` when required).

    Built-ins and model-based rewards declare theirs keyword-only; a custom function may use any named
    parameter, which TRL would fill by keyword anyway.
    """
    return {p.name: p.default for p in _settable(fn, custom_fn)}


def _settable(fn: Callable[..., Any], custom_fn: bool) -> list[inspect.Parameter]:
    kinds = (inspect.Parameter.KEYWORD_ONLY,) + ((inspect.Parameter.POSITIONAL_OR_KEYWORD,) if custom_fn else ())
    return [p for p in inspect.signature(fn).parameters.values() if p.kind in kinds and p.name not in DATASET_COLUMNS]


def accepted_params(name: str) -> list[str]:
    """Sorted names of the params a recipe may set for reward ``name``."""
    return sorted(_own_params(_lookup(name), custom.is_custom(name)))


def _annotation_names(annotation: Any) -> set[str]:
    """The names in a parameter's annotation: {"int", "None"} for `int | None` or "Optional[int]" (a string under
    `from __future__ import annotations`); empty when there is none."""
    if annotation is inspect.Parameter.empty:
        return set()
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return set(re.findall(r"[A-Za-z_]\w*", text)) - {"typing"}


# A custom reward's param annotated with one of these (alone, `| None` or Optional[...]) takes only that kind of
# value. A bool is no int and no float here: YAML's yes/on/true would otherwise count as 1.
_ANNOTATED_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (builtin.is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "a bool"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "List": (lambda v: isinstance(v, list), "a list"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
    "Dict": (lambda v: isinstance(v, dict), "a mapping"),
    "Mapping": (lambda v: isinstance(v, Mapping), "a mapping"),
    # YAML has no tuples: a list stands for one (build_reward converts it).
    "tuple": (lambda v: isinstance(v, (list, tuple)), "a list"),
    "Tuple": (lambda v: isinstance(v, (list, tuple)), "a list"),
}
# The item kinds read inside a list, a `tuple[X, ...]` or a mapping's values, and their plural for the message.
_ITEM_KINDS = {"int": "integers", "float": "numbers", "bool": "bools", "str": "strings"}
# What may stand before a kind's name: `typing.List`, `collections.abc.Mapping` (`abc.Mapping` once imported so).
_QUALIFIER = r"(?:typing\.|(?:collections\.)?abc\.)?"


def _annotated_kind(annotation: Any) -> str | None:
    """The `_ANNOTATED_KINDS` key a param is annotated with, `None` and Optional aside: "float" for `float | None`,
    "list" for `list[str]`, "List" for `typing.List[str]`; None for no annotation, a union of kinds (`int | str`)
    or any other type. Read from the text, as `from __future__ import annotations` leaves it: no user code runs."""
    head = re.fullmatch(_QUALIFIER + r"([A-Za-z_]\w*)(?:\[.*\])?", _sole_member(annotation), re.S)
    return head[1] if head and head[1] in _ANNOTATED_KINDS else None


def _item_kind(annotation: Any) -> str | None:
    """The `_ITEM_KINDS` key of a container param's items, `None` and Optional aside: "str" for `list[str]`,
    `List[str] | None` or `tuple[str, ...]`, "float" for `dict[str, float]` or `Mapping[str, float]` (the values);
    None for a bare container or items of any other or mixed type (`list[MyType]`, `list[int | str]`)."""
    generic = re.fullmatch(_QUALIFIER + r"(\w+)\[(.*)\]", _sole_member(annotation), re.S)
    if not generic:
        return None
    args = [arg.strip() for arg in _split_outside_brackets(generic[2], ",")]
    if generic[1] in ("list", "List") and len(args) == 1:
        item = args[0]
    elif generic[1] in ("tuple", "Tuple") and len(args) == 2 and args[1] == "...":  # not a fixed-length tuple
        item = args[0]
    elif generic[1] in ("dict", "Dict", "Mapping") and len(args) == 2:
        item = args[1]
    else:
        return None
    return item if item in _ITEM_KINDS else None


def _sole_member(annotation: Any) -> str:
    """An annotation's text, `None` and Optional aside; "" for no annotation or a union of several kinds."""
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    members = [m for m in _union_members(text) if m != "None"]
    return members[0] if len(members) == 1 else ""


def _union_members(text: str) -> list[str]:
    """`int | None` and `Optional[int]` → ["int", "None"]; `Union[a, b]` → ["a", "b"]; any other type → [it]."""
    text = text.strip()
    parts = _split_outside_brackets(text, "|")
    if len(parts) > 1:
        return [member for part in parts for member in _union_members(part)]
    union = re.fullmatch(r"(?:typing\.)?(Optional|Union)\[(.*)\]", text, re.S)
    if not union:
        return [text]
    members = [member for part in _split_outside_brackets(union[2], ",") for member in _union_members(part)]
    return [*members, "None"] if union[1] == "Optional" else members


def _split_outside_brackets(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[(") - (char in "])")
        if char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _check_kind(name: str, key: str, value: Any, param: inspect.Parameter, whole: bool) -> None:
    # The default's type is the param's kind; YAML makes "true" vs true easy to get wrong. `whole` (a custom
    # reward): a param annotated int, float, bool, str, list, dict or Mapping (see _ANNOTATED_KINDS), or an int
    # default without an annotation, refuses another kind of value here, at recipe load, and a number param
    # (annotated float, or a number default) refuses .nan and .inf unless that is its default; so do the items of
    # a list[str], tuple[float, ...] or Mapping[str, int] (see _check_items). Mid-training, "0.5" for a float
    # threshold raises TypeError at the first comparison, "false" for a bool is true, 5 for a list or [1] for a
    # dict fails wherever it is used, nan makes the reward return nan, and 2.5 for a count or an index fails or,
    # worse, rounds silently. Built-ins check their own ints and numbers, with their ranges.
    default = param.default
    names = _annotation_names(param.annotation)
    if value is None and (default is None or names & {"None", "Optional", "Any"}):
        return
    annotated = _annotated_kind(param.annotation) if whole else None
    if whole and not names and isinstance(default, int) and not isinstance(default, bool):
        annotated = "int"
    if annotated is not None:
        accepts, kind = _ANNOTATED_KINDS[annotated]
        ok = accepts(value)
    elif default is inspect.Parameter.empty or default is None:
        return
    elif isinstance(default, bool):
        ok, kind = isinstance(value, bool), "a bool"
    elif builtin.is_number(default):
        ok, kind = builtin.is_number(value), "a number"
    elif isinstance(default, tuple):  # YAML has no tuples: a list stands for one (build_reward converts it)
        ok, kind = isinstance(value, (list, tuple)), "a list"
    else:
        ok, kind = isinstance(value, type(default)), type(default).__name__
    if ok and whole and kind == "a number" and not _finite(value) and not _same_number(value, default):
        ok, kind = False, "a finite number" + (f" or its default, {default!r}" if isinstance(default, float)
                                                       and not _finite(default) else "")
    if not ok:
        raise ValueError(f"reward {name!r}: param {key!r} must be {kind}, got {value!r}")
    if whole and kind in ("a list", "a mapping"):
        _check_items(name, key, value, param, kind)


def _check_items(name: str, key: str, value: Any, param: inspect.Parameter, kind: str) -> None:
    # A list[str] given ['a', 3] failed only where the reward used the 3, mid-run: each item is held to the
    # scalar rules (no bool for a number, no .nan/.inf unless the default holds that same number).
    item_kind = _item_kind(param.annotation)
    if item_kind is None:
        return
    accepts = _ANNOTATED_KINDS[item_kind][0]
    taken_back = list(_items(param.default).values()) if isinstance(param.default, (list, tuple, Mapping)) else []
    for where, item in _items(value).items():
        if not accepts(item):
            items = _ITEM_KINDS[item_kind]
        elif item_kind == "float" and not _finite(item) and not any(_same_number(item, d) for d in taken_back):
            items = "finite " + _ITEM_KINDS[item_kind]
        else:
            continue
        what = f"{kind} {'of' if kind == 'a list' else 'to'} {items}"
        raise ValueError(f"reward {name!r}: param {key!r} must be {what}, got {value!r} ({where}: {item!r})")


def _items(value: Any) -> dict[str, Any]:
    """A container's items by where the message places them: "key 'a'" in a mapping, "item 1" (from 1) in a list."""
    if isinstance(value, Mapping):
        return {f"key {k!r}": v for k, v in value.items()}
    return {f"item {i}": v for i, v in enumerate(value, 1)}


def _wants_tuple(param: inspect.Parameter, custom_fn: bool) -> bool:
    """A param whose default is a tuple, or (a custom reward's) annotated `tuple[...]`: a YAML list becomes one."""
    return isinstance(param.default, tuple) or (custom_fn and _annotated_kind(param.annotation) in ("tuple", "Tuple"))


def _same_number(value: Any, default: Any) -> bool:
    """value == default, where nan equals nan (a default of nan is taken back as such)."""
    try:
        return value == default or (math.isnan(value) and math.isnan(default))
    except TypeError:
        return False


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range
        return False


def build_reward(name: str, params: dict[str, Any] | None = None, label: str | None = None) -> BoundReward:
    """TRL reward function for recipe entry ``name`` (a ``REWARDS`` key, ``package.module:function`` or
    ``path/to/file.py:function``) with ``params`` bound, called ``label`` in logs (default: the name, or the
    function's name for a custom reward), so one reward can appear twice with different params.

    One-line ValueError on an unknown name, unknown or missing param or bad value: a broken recipe should fail
    at load time, not an hour into training. Model-based rewards load their model on first call, not here.
    """
    fn = _lookup(name)
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise TypeError(f"reward {name!r}: params must be a mapping, got {type(params).__name__}")
    settable = {p.name: p for p in _settable(fn, custom.is_custom(name))}
    defaults = {key: p.default for key, p in settable.items()}
    for key, value in params.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1) if isinstance(key, str) else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"reward {name!r}: unknown param {key!r}{hint} "
                             f"(accepted: {', '.join(sorted(defaults)) or 'none'})")
        _check_kind(name, key, value, settable[key], whole=custom.is_custom(name))
    params = {k: tuple(v) if isinstance(v, list) and _wants_tuple(settable[k], custom.is_custom(name)) else v
              for k, v in params.items()}
    missing = sorted(k for k, v in defaults.items() if v is inspect.Parameter.empty and k not in params)
    if missing:
        raise ValueError(f"reward {name!r}: missing param{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if name in _VALIDATORS:
        _VALIDATORS[name](**{**defaults, **params})
    logger.debug("built reward %s with params %s", name, params)
    return BoundReward(fn, params, label or custom.default_label(name))


class BoundReward:
    """A reward with its recipe params bound, and its output checked.

    Not a functools.partial: TRL names a partial after the function it wraps, so two entries of one reward (say
    strict and soft format) would be logged under the same name. The check is here, not in TRL, so that training
    and evaluation stop alike: an exception, a NaN/inf or a wrong count becomes a ``RewardError`` naming the
    reward and the sample, instead of a NaN advantage that silently poisons a whole GRPO group.
    """

    def __init__(self, fn: Callable[..., Any], params: dict[str, Any], name: str):
        self.fn, self.params, self.__name__ = fn, dict(params), name
        self.__doc__ = fn.__doc__
        # A class reward takes its params once and keeps its state (a loaded model) across calls.
        self._instance = fn(**self.params) if inspect.isclass(fn) else None

    def load(self) -> None:
        """Load a model-based reward's model now rather than on its first call, which comes after the policy
        model loads and generates: a wrong path or device then fails first (ModelError, one line)."""
        if self._instance is not None and callable(getattr(self._instance, "load", None)):
            self._instance.load()

    def _call(self, completions: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        # By keyword, as TRL calls: a custom reward may declare `completions` keyword-only.
        if self._instance is not None:
            return self._instance(completions=completions, **kwargs)
        return self.fn(completions=completions, **self.params, **kwargs)

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        # A chat template that opens the reply itself (DeepSeek-R1's ends the prompt with "<think>\n") leaves that
        # text out of the sampled completion; the rewards judge the whole reply, so it goes back in front.
        prefixes = kwargs.pop("completion_prefix", None)
        if prefixes is not None:
            completions = [with_prefix(c, p or "") for c, p in zip(completions, prefixes, strict=True)]
        try:
            values = self._call(completions, kwargs)
        except ModelError:  # a reward model that cannot load (see load): no sample is to blame
            raise
        except SystemExit as err:  # not an Exception: it would end a run with exit 0 and no report
            raise RewardError(f"reward {self.__name__!r} called sys.exit({err.code!r}); a reward must return its "
                              f"scores (or raise)") from None
        except Exception as err:
            raise self._locate(completions, kwargs, err) from err
        return self._checked(values, completions)

    def _checked(self, values: Any, completions: Sequence[Any]) -> list[float | None]:
        n = len(completions)
        try:  # a 0-d tensor or array has __len__ but raises TypeError from it: a scalar, not a list
            # A set (`{score(c) for c in completions}`, a list comprehension mistyped) has no order: its values were
            # handed to the samples in hash order.
            count = None if isinstance(values, (str, bytes, dict, AbstractSet)) else len(values)
        except TypeError:
            count = None
        if count is None:
            raise RewardError(f"reward {self.__name__!r} returned a {type(values).__name__}, "
                              f"expected a list of {plural(n, 'float')}")
        if count != n:
            raise RewardError(f"reward {self.__name__!r} returned {plural(count, 'value')} for "
                              f"{plural(n, 'completion')}")
        # Fast path, the common case: plain finite floats (x - x is 0.0 unless x is inf or nan).
        if type(values) is list and all(v is None or (type(v) is float and v - v == 0.0) for v in values):
            return values
        checked: list[float | None] = []
        for i, value in enumerate(values):
            if value is None:
                checked.append(None)
                continue
            try:  # ints, bools, numpy and 0-d torch scalars all have __float__; strings do not
                number = float(value) if hasattr(type(value), "__float__") else None
            except (TypeError, ValueError):
                number = None
            except OverflowError:  # float(10**400) raises where float("1e400") gives inf; both are past float's range
                number = math.inf
            if number is None or not math.isfinite(number):
                shown = f"{number}" if number is not None else f"a {type(value).__name__}"
                raise RewardError(f"reward {self.__name__!r} returned {shown} for sample {i} of {n} "
                                  f"({_snippet(completions[i])}); rewards must be finite numbers or None")
            checked.append(number)
        return checked

    def _locate(self, completions: Sequence[Any], kwargs: dict[str, Any], err: Exception) -> RewardError:
        # A raise says nothing about which sample caused it: replay the batch one sample at a time (only ever on
        # this failure path), slicing every per-sample column alongside the completions.
        what = " ".join(f"{type(err).__name__}: {err}".split())
        try:
            n = len(completions)
            for i in range(n):
                one = {k: v[i:i + 1] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in kwargs.items()}
                try:
                    self._call(completions[i:i + 1], one)
                except Exception:
                    return RewardError(f"reward {self.__name__!r} raised {what} on sample {i} of {n} "
                                       f"({_snippet(completions[i])})")
        except Exception:  # completions that cannot be measured or sliced: report without a sample
            n = "?"
        return RewardError(f"reward {self.__name__!r} raised {what} on a batch of {plural(n, 'completion')} "
                           f"(no single sample reproduces it)")

    def __repr__(self) -> str:
        return f"BoundReward({self.__name__}: {getattr(self.fn, '__name__', self.fn)}(**{self.params}))"


def _snippet(completion: Any, limit: int = 60) -> str:
    text = completion_text(completion)
    return f"completion {text[:limit]!r}{'…' if len(text) > limit else ''}"
