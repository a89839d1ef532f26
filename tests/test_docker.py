"""Dockerfile.cuda stays in step with the package: its pins are pyproject's `cuda` extra, torch fits them, and the
image runs `python -m toolkit.run` with the outputs and the hub cache as volumes. Docker itself is not needed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from toolkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.cuda"
README = ROOT / "README.md"

# torch range of the pinned CUDA stack, from the packages' metadata: xformers 0.0.35 requires torch>=2.10, unsloth
# and unsloth-zoo 2026.10.9 require torch<2.15.0.
TORCH_MIN, TORCH_BELOW = (2, 10), (2, 15)


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    return result


def args() -> dict[str, str]:
    found = {}
    for keyword, rest in instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            found[name] = value
    return found


def env() -> dict[str, str]:
    found = {}
    for keyword, rest in instructions():
        if keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                found[name] = value
    return found


def pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in RUN instructions, quotes removed."""
    commands = []
    for keyword, rest in instructions():
        if keyword != "RUN":
            continue
        for part in re.split(r"&&|;", rest):
            tokens = shlex.split(part)
            if tokens[:2] == ["pip", "install"]:
                commands.append(tokens[2:])
    return commands


def exec_form(keyword: str) -> list[str]:
    [value] = [json.loads(rest) for kw, rest in instructions() if kw == keyword]
    return value


def cuda_extra() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = {}
    for requirement in pyproject["project"]["optional-dependencies"]["cuda"]:
        name, sep, version = requirement.partition("==")
        assert sep and re.fullmatch(r"[\w.]+", version), f"cuda extra: {requirement!r} is not an exact pin"
        pins[name] = version
    return pins


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_cuda_pins_match_pyproject_extra():
    found, installed = args(), [token for command in pip_installs() for token in command]
    assert cuda_extra(), "pyproject has no cuda extra"
    for name, version in cuda_extra().items():
        arg = f"{name.upper().replace('-', '_')}_VERSION"
        assert found.get(arg) == version, f"Dockerfile.cuda ARG {arg}={found.get(arg)}, pyproject cuda extra {version}"
        assert f"{name}==${{{arg}}}" in installed, f"no pip install of {name}==${{{arg}}}"
    # ...and the extra itself, so trl/transformers/peft come from the package's own pins.
    assert ".[cuda]" in installed


def test_torch_is_pinned_inside_the_stacks_range():
    found, installed = args(), [token for command in pip_installs() for token in command]
    torch, vision = found.get("TORCH_VERSION"), found.get("TORCHVISION_VERSION")
    assert torch and re.fullmatch(r"\d+\.\d+\.\d+", torch), torch
    assert TORCH_MIN <= version_tuple(torch)[:2] < TORCH_BELOW, torch
    # torchvision 0.N pairs with torch 2.(N-15): 0.25 with 2.10, 0.28 with 2.13.
    assert vision and version_tuple(vision)[1] == version_tuple(torch)[1] + 15, (torch, vision)
    # The first install of torch is by exact version, and every resolve after it names the same pin again.
    assert "torch==${TORCH_VERSION}" in installed and "torchvision==${TORCHVISION_VERSION}" in installed
    for command in pip_installs():
        if "--no-deps" not in command and command != ["--upgrade", "pip"]:
            assert "torch==${TORCH_VERSION}" in command, command


def test_entrypoint_default_recipe_and_volumes():
    assert exec_form("ENTRYPOINT") == ["python", "-m", "toolkit.run"]
    [recipe] = exec_form("CMD")
    assert (ROOT / recipe).is_file(), recipe
    workdir = [rest for kw, rest in instructions() if kw == "WORKDIR"][-1]
    volumes = exec_form("VOLUME")
    assert f"{workdir}/runs" in volumes
    assert env()["HF_HOME"] in volumes
    # The default recipe writes into the runs volume, and what it reads is copied into the image.
    output = load_recipe(ROOT / recipe).output_dir
    assert not output.is_absolute() and output.parts[0] == "runs", output
    copied = {source for kw, rest in instructions() if kw == "COPY" for source in rest.split()[:-1]}
    assert {"toolkit", "recipes", "data", "pyproject.toml", "README.md"} <= copied


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "runs", ".git"} <= ignored
    assert not {"toolkit", "recipes", "data", "pyproject.toml", "README.md"} & ignored


def test_readme_gives_the_build_and_run_commands():
    text = README.read_text()
    assert "## Run on a rented GPU" in text
    assert "docker build -f Dockerfile.cuda -t toolkit-cuda ." in text
    assert "docker run --gpus all" in text
    lines = text[text.index("docker run --gpus all"):].splitlines()
    command = lines[0]
    for line in lines[1:]:  # the continuation lines of the command
        if not command.endswith("\\"):
            break
        command = command[:-1] + line
    for mount in (":/app/runs", f":{env()['HF_HOME']}"):
        assert mount in command, (mount, command)
    assert "toolkit-cuda" in command and "recipes/" in command


def test_pyproject_torch_floor_is_one_transformers_runs_with():
    # `torch>=2.4` let pip keep a torch 2.4 already installed, with which transformers 5 disables PyTorch ("PyTorch
    # >= 2.5 is required") and every model load fails.
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    def floor(requirements) -> tuple[int, ...]:
        [spec] = [s for r in map(Requirement, requirements) if r.name == "torch" for s in r.specifier
                  if s.operator == ">="]
        return version_tuple(spec.version)

    ours = floor(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    transformers_floor = max(floor([r]) for r in requires("transformers") if Requirement(r).name == "torch")
    assert ours >= transformers_floor, (ours, transformers_floor)
