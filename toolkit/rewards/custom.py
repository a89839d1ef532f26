"""Custom rewards named in a recipe as ``package.module:function`` or ``path/to/file.py:function``.

Loaded and checked when the recipe loads (importable, callable, takes ``completions`` and ``**kwargs``), so a
typo costs a one-line error at once rather than a crash after the model has loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

# Keyword arguments only TRL's trainer passes: the evaluation and `python -m toolkit.rewards` score without them.
TRAINING_ONLY = frozenset({"completion_ids", "trainer_state", "log_extra", "log_metric", "environments"})


def is_custom(name: str) -> bool:
    return ":" in name


def default_label(name: str) -> str:
    """Name in logs: the function's name for a custom reward (``pkg.mod:score`` → ``score``), else ``name``."""
    return name.rpartition(":")[2] if is_custom(name) else name


def load_custom(name: str) -> Callable[..., Any]:
    """The function ``name`` points to, checked; ValueError with a one-line reason otherwise."""
    target, _, attr = name.rpartition(":")
    if not target or not attr.isidentifier():
        raise ValueError(f"custom reward {name!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    module = _load_file(name, target) if _is_file(target) else _import(name, target)
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"custom reward {name!r}: {target} has no attribute {attr!r}")
    if not callable(fn) or inspect.isclass(fn):
        raise ValueError(f"custom reward {name!r}: {attr} is a {type(fn).__name__}, not a function")
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        raise ValueError(f"custom reward {name!r}: async reward functions are not supported; make it synchronous")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise ValueError(f"custom reward {name!r}: cannot read the signature of {attr}") from None
    takes_completions = "completions" in params and params["completions"].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not (takes_completions and takes_kwargs):
        raise ValueError(f"custom reward {name!r}: {attr}{inspect.signature(fn)} must accept `completions` and "
                         f"`**kwargs` (TRL passes every dataset column as a keyword argument)")
    for param in params.values():
        if param.default is not inspect.Parameter.empty:
            continue
        # Both failed only at the reward's first call, after the policy model loaded and generated.
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise ValueError(f"custom reward {name!r}: {attr}{inspect.signature(fn)}: parameter {param.name!r} is "
                             "positional-only and has no default, but every argument is passed by keyword")
        if param.name in TRAINING_ONLY:
            raise ValueError(f"custom reward {name!r}: {attr}{inspect.signature(fn)}: parameter {param.name!r} "
                             "needs a default (None): only TRL's training passes it, the evaluation and `python -m "
                             "toolkit.rewards` call rewards without it")
    return fn


def source_file(name: str) -> Path | None:
    """The file a custom reward's code is in: the one the name gives (`x.py:fn`), else its module's (`pkg.mod:fn`);
    None when neither can be found. Whatever the function turns out to be (an object, a partial, decorated)."""
    target = name.rpartition(":")[0]
    if _is_file(target):
        return Path(os.path.expanduser(target))
    spec = importlib.util.find_spec(target)
    return Path(spec.origin) if spec is not None and spec.origin else None


def source_files(name: str) -> list[Path]:
    """Every file a custom reward's code may come from, sorted: its own (`source_file`) and each module loaded now
    whose file lies under the reward's folder (`x.py:fn`: the file's folder; `pkg.mod:fn`: the top-level package's,
    or a top-level module's folder), so that a helper the reward imports (`import crhelp` next to it) counts as its
    code too. Not the standard library, installed packages (site-packages, the virtual environment) or the toolkit,
    even when they lie under that folder; a reward that is itself one of those counts its own file alone. Empty
    when the reward's file cannot be found."""
    own = source_file(name)
    if own is None:
        return []
    own_real = os.path.realpath(own)
    files = {own_real} if os.path.isfile(own_real) else set()
    outside = _not_local()
    for root in _roots(name, own_real):
        if any(Path(root).is_relative_to(folder) for folder in outside):  # installed: modules vary, never edited
            continue
        skip = [folder for folder in outside if folder != root and Path(folder).is_relative_to(root)]
        for key, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if key == "__main__" or not isinstance(file, str):  # the script that runs is no helper
                continue
            real = Path(os.path.realpath(file))
            if real.is_relative_to(root) and not any(real.is_relative_to(folder) for folder in skip) \
                    and real.is_file():
                files.add(str(real))
    return [Path(file) for file in sorted(files)]


def source_digest(name: str) -> str:
    """sha256 over `source_files(name)`, each file's path and bytes: it changes when the reward's file or a local
    module it imports is edited, added or removed. "" when there is none. The paths are taken relative to the
    reward's folder (see `_roots`), so that moving the project between a run and its --resume keeps the digest."""
    files, own = source_files(name), source_file(name)
    if not files or own is None:
        return ""
    roots = [Path(root) for root in _roots(name, os.path.realpath(own))]
    digest = hashlib.sha256()
    for file in files:
        try:
            data = file.read_bytes()
        except OSError:  # gone or unreadable since it was imported: its path still counts
            data = b""
        digest.update(f"{_relative(file, roots)}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _relative(file: Path, roots: list[Path]) -> str:
    """`file` from the first root it lies under (as posix text); absolute, as a last resort, when under none."""
    for root in roots:
        if file.is_relative_to(root):
            return file.relative_to(root).as_posix()
    return file.as_posix()


def _roots(name: str, own: str) -> list[str]:
    """The folders whose loaded modules count as the reward's code (see source_files)."""
    target = name.rpartition(":")[0]
    if _is_file(target):
        return [os.path.dirname(own)]
    try:
        spec = importlib.util.find_spec(target.partition(".")[0])
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:  # a package: its folder (folders, for a namespace one)
        return sorted({os.path.realpath(folder) for folder in spec.submodule_search_locations})
    return [os.path.dirname(own)]


def _not_local() -> set[str]:
    """Folders whose modules are no reward's helpers: the standard library, site-packages, the interpreter's and
    the virtual environment's prefixes, and the toolkit itself."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    folders = [paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    folders += [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    with contextlib.suppress(AttributeError):  # virtualenv's old site.py lacks them
        folders += [*site.getsitepackages(), site.getusersitepackages()]
    folders.append(str(Path(__file__).parents[1]))  # toolkit/
    return {os.path.realpath(folder) for folder in folders if folder}


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target


def _import(name: str, module: str) -> ModuleType:
    with _import_errors(name, repr(module)):
        loaded = importlib.import_module(module)
    return loaded


def _load_file(name: str, target: str) -> ModuleType:
    path = Path(os.path.expanduser(target)).resolve()  # a recipe value never passes a shell
    if not path.is_file():
        raise ValueError(f"custom reward {name!r}: file not found: {target}")
    # One module per file, keyed by its resolved path: loading a recipe twice does not execute the file twice,
    # and two files called rewards.py do not collide.
    key = f"toolkit_custom_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"custom reward {name!r}: cannot load {target} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # before exec, as import does, so dataclasses and pickling inside it work
    try:
        with _import_errors(name, target):
            spec.loader.exec_module(module)
    except BaseException:  # Ctrl-C too: a half-run module must not be found by the next load
        del sys.modules[key]
        raise
    return module


@contextlib.contextmanager
def _import_errors(name: str, what: str) -> Iterator[None]:
    """Whatever importing the reward's module raises, as one line naming it; KeyboardInterrupt still stops the run.

    SystemExit included: a script's sys.exit() or module-level argparse raises it, and uncaught it ended the whole
    run with the script's status (0: nothing done and no word why). What the module wrote (argparse's usage) stays
    on the console above the error: stdout and stderr are left alone, as modules may reconfigure or keep them."""
    try:
        yield
    except SystemExit as exc:
        raise ValueError(f"custom reward {name!r}: cannot import {what}: called sys.exit({exc.code!r}); a reward "
                         "file's script code belongs under `if __name__ == '__main__':`") from None
    except Exception as exc:  # a broken module may raise anything at import
        raise ValueError(f"custom reward {name!r}: cannot import {what}: {_one_line(exc)}") from None


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())
