"""A recipe's retrieval index: `open_index` and `build_index`, and the `python -m toolkit.index` command.

The index itself (the Chroma collection, its manifest, the incremental sync) is `toolkit.index_store`; this module
says where a recipe keeps it and with what embedder and chunking, and checks that a reader's recipe chunks as the
index was built.

`python -m toolkit.index RECIPE [overrides] [--eval]` builds or updates a recipe's index and prints what changed;
`--eval` adds recall@k and MRR of the questions' gold documents.
"""

from __future__ import annotations

import logging
import sys

from toolkit.data import Document
from toolkit.index_store import Index, IndexUnavailable, SyncCounts
from toolkit.report import plural

logger = logging.getLogger(__name__)


def open_index(recipe, *, create: bool = True) -> Index:
    """The recipe's index, under its output folder."""
    from toolkit.models import resolve_embedder

    cfg = recipe.retrieval
    index = Index(
        recipe.output_dir / "index",
        cfg.collection,
        cfg.embedder,
        resolve_embedder(cfg.embedder),
        embed_batch_size=cfg.embed_batch_size,
        write_batch_size=cfg.write_batch_size,
        create=create,
    )
    if not create:  # a build updates the chunking; a reader's chunks must be the ones the recipe makes
        built = index.manifest
        for key in ("chunk_size", "chunk_overlap"):
            # An index built before the chunking was recorded has none to compare and is used as it is.
            if key in built and built[key] != getattr(cfg, key):
                raise IndexUnavailable(f"the index at {index.path} was built with retrieval.{key} {built[key]}, "
                                       f"not {getattr(cfg, key)}")
    return index


def build_index(recipe, docs: list[Document], progress=None) -> tuple[Index, SyncCounts]:
    """Open (or create) the recipe's index under its output folder and sync it with the corpus."""
    index = open_index(recipe)
    cfg = recipe.retrieval
    counts = index.update(docs, cfg.chunk_size, cfg.chunk_overlap, progress)
    logger.info("index: %d chunks (%d added, %d updated, %d deleted, %d unchanged)", index.count(),
                *vars(counts).values())
    return index, counts


# ----------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from toolkit.cli import ERRORS, EmbeddingProgress, Parser, fail, load_with_overrides, setup_logging
    from toolkit.metrics import retrieval_metrics

    parser = Parser("python -m toolkit.index", "Build or update a recipe's retrieval index.")
    parser.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/wine.yaml")
    parser.add_overrides("dotted overrides: 'data.corpus=[my.csv]' output_dir=/tmp/x")
    parser.add_argument("--eval", action="store_true", help="also print recall@k and MRR on the eval questions")
    args = parser.parse_intermixed_args(argv)
    console = setup_logging()
    out = Console(highlight=False)
    try:
        recipe, dataset = load_with_overrides(args.recipe, args.overrides)
        index = open_index(recipe)
        cfg = recipe.retrieval
        with EmbeddingProgress(console) as progress:
            counts = index.update(dataset.documents, cfg.chunk_size, cfg.chunk_overlap, progress)
        out.print(
            f"index {index.path} (collection {index.name}, {cfg.embedder}): "
            f"{plural(len(dataset.documents), 'document')}, {plural(index.count(), 'chunk')}",
            soft_wrap=True, markup=False,  # a folder name may hold "[...]", which rich would read as markup
        )
        out.print("  ".join(f"{name} {value}" for name, value in vars(counts).items()))
        if args.eval:
            questions = dataset.eval[: recipe.eval.limit]
            metrics = retrieval_metrics(index, questions, cfg.top_k)
            scores = "  ".join(f"{name} {value:.3f}" for name, value in metrics.items() if name != "questions")
            scored = metrics["questions"]
            out.print(f"retrieval on {plural(scored, 'eval question')}: {scores}" if scored else
                      "retrieval not scored: no eval question names its gold source document (the `source` "
                      f"field; {plural(len(questions), 'eval question')} read)", soft_wrap=True)
    except ERRORS as err:
        return fail(console, err)
    except KeyboardInterrupt:
        console.print("interrupted: every finished batch is stored; run the command again to complete the index")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
