"""`python -m toolkit.search RECIPE "query" [-k N] [overrides]`: the top-k chunks of a recipe's index for a query.

Reads the index `python -m toolkit.index RECIPE` built; never builds or changes it.
"""

from __future__ import annotations

import sys

from rich.console import Console

from toolkit.index import open_index
from toolkit.index_store import Hit, IndexUnavailable

# Metadata the index stores itself; the rest is the document's own (e.g. a CSV's metadata_columns).
_OWN = ("source", "position")


def format_hit(rank: int, hit: Hit) -> str:
    extra = "  ".join(f"{key}={value}" for key, value in hit.metadata.items() if key not in _OWN)
    head = f"{rank}. {hit.score:.3f}  {hit.source}  [{hit.id}]" + (f"  {extra}" if extra else "")
    body = "\n".join(f"   {line}" for line in hit.text.splitlines() if line.strip())
    return f"{head}\n{body}"


def main(argv: list[str] | None = None) -> int:
    from toolkit.cli import ERRORS, Parser, fail, index_command, setup_logging
    from toolkit.recipe import Recipe, load_recipe

    parser = Parser("python -m toolkit.search", __doc__)
    parser.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/wine.yaml")
    parser.add_argument("query", help="the question or text to search for")
    parser.add_overrides("dotted overrides, e.g. output_dir=/tmp/x")
    parser.add_argument("-k", type=int, default=None, help="how many chunks (default: the recipe's retrieval.top_k)")
    args = parser.parse_intermixed_args(argv)
    console = setup_logging()
    try:
        if not args.query.strip():
            raise IndexUnavailable("the query is empty")
        try:
            args.query.encode("utf-8")
        except UnicodeEncodeError:
            # Bytes that are not UTF-8 reach argv as lone surrogates, which the tokenizer cannot take.
            raise IndexUnavailable("the query is not valid UTF-8 text") from None
        field, sep, _ = args.query.partition("=")
        if sep and field.split(".")[0] in Recipe.model_fields:
            # `search RECIPE output_dir=runs/x "query"` took the override as the query and searched for it.
            raise IndexUnavailable(f"the query {args.query!r} looks like an override: the query comes right after the "
                                   "recipe, then the overrides")
        if args.k is not None and args.k < 1:
            raise IndexUnavailable(f"-k must be at least 1, got {args.k}")
        recipe = load_recipe(args.recipe, args.overrides)
        try:
            index = open_index(recipe, create=False)
        except IndexUnavailable as err:
            raise IndexUnavailable(f"{err}; build it with: {index_command(args.recipe, args.overrides)}") from None
        hits = index.search([args.query], args.k or recipe.retrieval.top_k)[0]
    except ERRORS as err:
        return fail(console, err)
    except KeyboardInterrupt:  # Ctrl-C while loading the embedder or searching: the usual exit status, no traceback
        console.print("interrupted")
        return 130
    out = Console(highlight=False, soft_wrap=True)
    if not hits:
        out.print("no chunks in the index", markup=False)
    for rank, hit in enumerate(hits, 1):
        out.print(format_hit(rank, hit), markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
