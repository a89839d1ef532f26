"""Text helpers shared by the rewards and the evaluator, so training and evaluation agree on "correct".

Everything here is pure and never raises on model text. Hot paths use str methods and translate tables rather
than per-character Python loops or backtracking regexes: the rewards run on every sampled completion.
"""

from __future__ import annotations

import functools
import math
import re
import string
import unicodedata
from collections.abc import Sequence
from typing import Any

from toolkit.rewards.completions import extract_answer

_ARTICLES = frozenset({"a", "an", "the"})
# Small on purpose: it only has to stop glue words from counting as "grounded".
STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for",
    "with", "from", "as", "into", "about", "is", "are", "was", "were", "be", "been", "being",
    "it", "its", "this", "that", "these", "those", "which", "who", "what", "there", "their",
    "they", "he", "she", "his", "her", "has", "have", "had", "do", "does", "did", "so", "than"})
# A minus glued to a word is a hyphen ("mid-2019", "COVID-19"), and so is a second one ("--7"); digit groups are
# exactly three ("1,0000" is no 1000); ".5" is 0.5, but "No.5" is 5.
_NUMBER = re.compile(r"(?:(?<![\w.,\-])-)?(?:[0-9]+(?:,[0-9]{3}(?![0-9]))*(?:\.[0-9]+)?|(?<![\w.,])\.[0-9]+)")
# A number with its scale word ("3 million", "1.5 billion"): group 1 the number, group 2 the scale.
_SCALED_NUMBER = re.compile(rf"({_NUMBER.pattern})(?:\s*(thousand|million|billion)s?\b)?", re.IGNORECASE)
_CURRENCY = "$€£%"
# A sign right before a currency symbol belongs to the number: "-$5" is -5, not 5. Not "- $5": a list's bullet.
_SIGNED_CURRENCY = re.compile(r"(?<![\w.,\-])-([$€£])(?=\.?\d)")
MINUS = "\u2212"  # the minus sign of typeset text ("−5 °C"), not the ASCII hyphen-minus


class _NumberTable(dict):
    """A str.translate table that also drops invisible format characters (category Cf), as normalize does: a gold
    "1992" scraped with a zero-width space after it was no number ("It was 1992." no match), "1\u00ad000" was 1."""

    def __missing__(self, code: int) -> str | int:
        value = "" if unicodedata.category(chr(code)) == "Cf" else code
        self[code] = value
        return value


# Only these become ASCII for the number match: NFKC would also turn "1992¹" into 19921 and "2½" into 21.
# The en dash too: typeset text writes "–11 °C" with it (a range's en dash is no sign: "1990–1995" is 1990).
_NUMBER_CHARS = _NumberTable(str.maketrans({
    **{chr(0xFF10 + d): str(d) for d in range(10)}, MINUS: "-", "\u2013": "-", "\uff0d": "-", "\ufe63": "-",
    "\u207b": "-", "\uff0e": ".", "\uff0c": ",",
    # the spaces typeset text puts between digit groups ("4 800"; NFKD's space too)
    "\u00a0": " ", "\u2007": " ", "\u2009": " ", "\u202f": " "}))
_WORD_SIGNS = ("minus", "negative")
_NEGATED = re.compile(rf"\b(?:{'|'.join(_WORD_SIGNS)})\s*[$€£]?$", re.IGNORECASE)  # "minus 5", "minus $5"
# A number in words does not run on past the end of a clause: "The test was negative. Five cases." is 5.
_CLAUSE_END = re.compile(r"[.;:!?](?:\s|$)")
_BREAK = "."  # a token normalize never makes: it ends a run of number words
_LARGEST = 10**15  # number words past this are a loop, not an answer (and their float would overflow)

# Number words, for golds or answers written out ("ninety-two"). English only, up to the billions: enough for
# scores, years and prices, and cheap because it only runs when a gold is numeric and the answer has no digits.
_SMALL = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_SMALL |= {word: 10 * value for value, word in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}


# --------------------------------------------------------------------------------------------- normalization
class _FoldTable(dict):
    """Character → folded form for normalize(), filled on first sight of each character: combining marks vanish
    (accent folding after NFKD), and so do invisible format characters (category Cf: zero-width space, soft hyphen,
    BOM; scraped text holds them, and a word with one inside was another word: a copied answer no match, a copy of
    the worked example laced with them no copy); punctuation becomes a space, everything else stays. Punctuation
    is Unicode's (category P) and ASCII's (``string.punctuation``, which SQuAD strips: it has symbols such as ``$ +
    < = > ^ ` | ~`` that Unicode files under S, so a `Nebbiolo` quoted as Markdown code still matches). Other
    symbols (€, £, emoji) stay. Building it for all of Unicode up front would cost a second at import."""

    def __missing__(self, ch: str) -> str:
        punctuation = ch in string.punctuation or unicodedata.category(ch).startswith("P")
        value = "" if unicodedata.combining(ch) or unicodedata.category(ch) == "Cf" else " " if punctuation else ch
        self[ch] = value
        return value


_FOLD = _FoldTable()
# ASCII never changes under NFKD and has no combining marks: one C-level translate is all it needs.
_ASCII_FOLD = str.maketrans({chr(c): _FOLD[chr(c)] for c in range(128)})
_BYTES_FOLD = bytes(ord(_FOLD[chr(c)]) if c < 128 else c for c in range(256))
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _fold_run(match: re.Match[str]) -> str:
    return "".join([_FOLD[ch] for ch in match.group()])


# A number's own marks, kept through the fold: thousands separators go ("1,000" is "1000", as in the number
# match), and a leading minus stays, as MINUS (a symbol, which the fold keeps): "-3" must not equal "3".
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Digit groups split by a space ("4 800", "10 000"; NFKD makes a no-break or thin space a space) are one number,
# when the first group has at most three digits: "in 1998 200 bottles" stays two.
_SPACED_GROUPS = re.compile(r"(?<![\d,.])\d{1,3}(?: \d{3}(?!\d))+")
# Where any of the marks below can apply: a digit after a comma, space, point, minus or signed currency symbol.
# Most text has none, and skips the substitutions (the rewards normalize every completion).
_MARKED = re.compile(r"\d[ ,]\d|[.\-]\d|-[$€£]\d")
_BARE_DECIMAL = re.compile(r"(?<![\w.,])\.(?=\d)")  # ".5" is "0.5"
_SIGN = re.compile(r"(?<![\w.,\-])-(?=\d)")  # MINUS is "-" by then


def number_marks(text: str) -> str:
    """``text`` with thousands separators (commas, or spaces between digit groups) removed, bare decimals given
    their 0 (".5" → "0.5") and each leading minus of a number (also before its currency symbol: "-$5" → "$−5")
    written as MINUS."""
    if MINUS in text or "\u2013" in text:
        # A minus or en dash that is no sign ("1990−1995") is a hyphen, as "-" is; one that is, is MINUS below.
        text = text.replace(MINUS, "-").replace("\u2013", "-")
    if not _MARKED.search(text):
        return text
    if "," in text:
        text = _THOUSANDS.sub("", text)
    if " " in text:
        text = _SPACED_GROUPS.sub(lambda m: m.group().replace(" ", ""), text)
    if "." in text:
        text = _BARE_DECIMAL.sub("0.", text)
    if "-" in text:
        text = _SIGN.sub(MINUS, _SIGNED_CURRENCY.sub(r"\1-", text))  # "-$5" is "$-5", then "$−5"
    return text


def _fold(text: str) -> str:
    """Lowercase, accents dropped, punctuation as spaces, numbers as ``number_marks`` writes them."""
    if not text.isascii():
        # Decomposed before lowercasing: a letter such as "𝐁" is an uppercase "B" only after NFKD.
        text = unicodedata.normalize("NFKD", text)
    text = number_marks(text).lower()
    if text.isascii():
        return text.translate(_ASCII_FOLD)
    # str.translate takes a slow path on any non-ASCII string (measured 2x slower than all of this): fold the
    # ASCII bulk as UTF-8 bytes, whose multi-byte sequences (>= 0x80) pass unchanged, then only the non-ASCII
    # runs character by character. surrogatepass: model text may hold lone surrogates, which must not raise.
    text = text.encode("utf-8", "surrogatepass").translate(_BYTES_FOLD).decode("utf-8", "surrogatepass")
    return _NON_ASCII.sub(_fold_run, text)


def normalize(text: str) -> str:
    """SQuAD-style answer normalization (lowercase, punctuation as spaces, articles dropped, whitespace collapsed),
    plus accent folding ("Nebbióló" == "nebbiolo") and Unicode punctuation ("«Barolo»" == "barolo")."""
    tokens = _fold(text).split()
    if not _ARTICLES.isdisjoint(tokens):  # the common case has none: skip the per-token Python loop
        tokens = [tok for tok in tokens if tok not in _ARTICLES]
    return " ".join(tokens)


def content_tokens(text: str) -> set[str]:
    """Normalized tokens minus STOPWORDS (which include the articles)."""
    return set(_fold(text).split()).difference(STOPWORDS)


# ---------------------------------------------------------------------------------------------------- numbers
def _finite(value: float) -> float | None:
    # _NUMBER only admits ASCII digits, so float() cannot fail; a huge one overflows to inf: no usable number.
    return value if math.isfinite(value) else None


def words_number(tokens: Sequence[str]) -> float | None:
    """Value of the first run of English number words in normalized tokens ("ninety two points" → 92, "nineteen
    ninety two" → 1992, "minus five" → -5). Words that cannot continue the number end it ("one two three" → 1,
    "five and ten" → 5: "and" only follows hundred or a scale, "one hundred and five")."""
    return _words_run(tokens)[0]


def _words_run(tokens: Sequence[str]) -> tuple[float | None, int, int]:
    """(value, first, stop) of the first run of number words, tokens[first:stop], its sign word included; value
    None when there is none, or when it passes 10^15 (a loop of words, not an answer, whose float would
    overflow)."""
    total = current = 0
    first = sign_at = None
    stop = 0
    previous_kind = ""  # of the last word read: "small", "scale" (hundred, thousand, ...) or "and"
    for i, tok in enumerate(tokens):
        if tok in _SMALL:
            value = _SMALL[tok]
            if previous_kind != "small" or (value < 10 and current % 100 >= 20 and current % 10 == 0):
                current += value  # "twenty" then "two"
            elif value >= 10 and current % 100 >= 10:
                current = current * 100 + value  # a year read in pairs: "nineteen" then "ninety"
            else:
                break
            kind = "small"
        elif tok == "hundred":
            current, kind = max(current, 1) * 100, "scale"
        elif tok in _SCALES:
            total, current, kind = total + max(current, 1) * _SCALES[tok], 0, "scale"
        elif tok == "and" and previous_kind == "scale":
            previous_kind = "and"
            continue
        elif first is None:
            sign_at = i if tok in _WORD_SIGNS else None
            continue
        else:
            break
        if first is None:
            first = sign_at if sign_at == i - 1 else i
        previous_kind, stop = kind, i + 1
        if total + current > _LARGEST:
            return None, first, stop
    if first is None:
        return None, len(tokens), len(tokens)
    value = float(total + current)
    return (-value if first == sign_at else value), first, stop


def _number_text(text: str) -> str:
    # Digits and signs as _NUMBER reads them: full-width digits, the typeset minus and the spaces between digit
    # groups become ASCII, digit groups split by a space are one number (as in normalize: an answer "1 000" was 1,
    # no match for a gold "1000", though a gold "1 000" matched an answer "1000"), and a sign before a currency
    # symbol moves onto the number.
    if not text.isascii():
        text = text.translate(_NUMBER_CHARS)
    if " " in text:
        text = _SPACED_GROUPS.sub(lambda m: m.group().replace(" ", ""), text)
    return _SIGNED_CURRENCY.sub("-", text) if "-" in text else text  # "-$5" is "-5"


def _readings(match: re.Match[str]) -> tuple[float | None, ...]:
    # A _SCALED_NUMBER match's value, then, with a scale word, the digits alone.
    value = float(match.group(1).replace(",", ""))
    return (_finite(value * _SCALES[match.group(2).lower()]), _finite(value)) if match.group(2) else \
        (_finite(value),)


def answer_numbers(pred: str) -> tuple[float | None, ...]:
    """First number in an answer: digits ("about 1,000 metres" → 1000), else number words. Digits with a scale
    word give two readings, scaled first: "300 million" answers both "how many bottles" (300000000) and "how many
    million bottles" (300)."""
    text = _number_text(pred)
    match = _SCALED_NUMBER.search(text)
    if match:
        return _signed_readings(text, match)
    tokens = [tok for clause in _CLAUSE_END.split(pred) for tok in (*normalize(clause).split(), _BREAK)]
    return (words_number(tokens),)


def _signed_readings(text: str, match: re.Match[str]) -> tuple[float | None, ...]:
    values = _readings(match)
    # "minus 5", "negative 3": the sign in words. (A "-" before them would make "minus -5": left as -5.)
    if _NEGATED.search(text, 0, match.start()):
        values = tuple(-v if v is not None and v > 0 else v for v in values)
    return values


@functools.lru_cache(maxsize=4096)
def _text_numbers(text: str) -> tuple[tuple[float | None, ...], ...]:
    # The readings of every number in digits, as answer_numbers reads the first.
    text = _number_text(text)
    return tuple(_signed_readings(text, match) for match in _SCALED_NUMBER.finditer(text))


def holds_numbers(pred: str, gold: str, tolerance: float = 0.0, rel_tolerance: float = 0.0) -> bool:
    """Whether ``pred`` holds every number that ``gold`` writes in digits (by value, signed and scaled as the number
    match reads them, within the tolerances): among ``pred``'s numbers in digits, or, when it has none, its number
    in words. True for a gold without digits."""
    wanted = [readings[0] for readings in _text_numbers(gold) if readings[0] is not None]
    if not wanted:
        return True
    found = [v for readings in _text_numbers(pred) for v in readings if v is not None] or \
        [v for v in answer_numbers(pred) if v is not None]
    return all(any(math.isclose(v, w, rel_tol=rel_tolerance, abs_tol=tolerance) for v in found) for w in wanted)


@functools.lru_cache(maxsize=4096)
def gold_forms(gold: str) -> tuple[str, float | None]:
    """(match key, number or None) of a gold answer; cached because a GRPO group shares its gold."""
    # A closing period ("1992.") and a plus sign ("+5") do not make a number text.
    bare = _number_text(gold.strip()).rstrip(".").strip(_CURRENCY).strip().removeprefix("+")
    match = _SCALED_NUMBER.fullmatch(bare)
    number = _readings(match)[0] if match else None
    if number is None:
        # A gold counts as numeric when it is one number in words ("ninety-two", "minus five"), not several
        # ("four-four-two", "seven and seven").
        tokens = normalize(bare).split()
        value, first, stop = _words_run(tokens)
        number = value if (first, stop) == (0, len(tokens)) else None
    return answer_key(gold), number


def answer_key(text: str) -> str:
    # Article-only golds ("A" in multiple choice) normalize to nothing; keep their words ("A." and "(A)" are "a")
    # and, for text of punctuation alone, the raw text, so that no answer made of punctuation matches them.
    return normalize(text) or " ".join(_fold(text).split()) or text.strip().lower()


# ------------------------------------------------------------------------------------------------- matching
def golds(answer: Any, aliases: Any) -> list[str]:
    if isinstance(aliases, str):
        aliases = [aliases]
    candidates = [answer, *(aliases if isinstance(aliases, (list, tuple)) else [])]
    return [g for g in candidates if isinstance(g, str) and g.strip()]


def matches(pred: str, gold_list: Sequence[str], tolerance: float = 0.0, rel_tolerance: float = 0.0) -> bool:
    """Normalized ``pred`` equals a gold; for a numeric gold, ``pred``'s first number equals it (within the
    tolerances) instead, so that "92 points" matches "92" and "-$3" does not match "3"."""
    key = numbers = None
    for gold in gold_list:
        gold_key, gold_number = gold_forms(gold)
        if gold_number is None:
            if key is None:
                key = answer_key(pred)
            if gold_key == key:
                return True
            continue
        if numbers is None:
            # nan where nothing was found: looked once, and nan is close to nothing
            numbers = [math.nan if v is None else v for v in answer_numbers(pred)]
        if any(math.isclose(v, gold_number, rel_tol=rel_tolerance, abs_tol=tolerance) for v in numbers):
            return True
    return False


def is_exact_match(text: str, answer: str | None, aliases: Sequence[str] | None = None, *,
                   tolerance: float = 0.0, rel_tolerance: float = 0.0) -> bool:
    """Normalized extracted answer equals the gold or an alias, given exactly once.

    A numeric gold also matches when the answer's first number equals it (within ``tolerance`` absolute or
    ``rel_tolerance`` relative, as ``math.isclose``), because models like to add units ("92 points" for "92",
    "$25" for "25"). Several ``<answer>`` tags never match: hedging across guesses is not an answer (and a
    measured reward hack repeated the tag up to the length limit).
    """
    if text.count("<answer>") > 1:
        return False
    pred = extract_answer(text)
    return bool(pred) and matches(pred, golds(answer, aliases), tolerance, rel_tolerance)


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1 on normalized tokens; when either side normalizes to nothing, 1.0 iff their ``answer_key``
    forms are equal, else 0.0."""
    pred_toks, gold_toks = normalize(pred).split(), normalize(gold).split()
    if not pred_toks or not gold_toks:
        # An article-only gold ("A" in multiple choice) has no tokens, and neither has an answer "The": comparing
        # the empty token lists would pay it in full. answer_key keeps such golds apart, as in exact match.
        return float(answer_key(pred) == answer_key(gold))
    # Counter & Counter is slow for a few tokens; count only the shared ones, which are few.
    common = sum(min(pred_toks.count(tok), gold_toks.count(tok)) for tok in set(pred_toks).intersection(gold_toks))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_toks), common / len(gold_toks)
    return 2 * precision * recall / (precision + recall)
