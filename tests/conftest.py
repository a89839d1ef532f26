"""Shared test set-up: tests never reach a model hub (everything they load ships inside installed packages)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _in_project_root():
    """Recipes name their data relative to the project root, where `make run` runs them; every test starts there
    too, whatever directory pytest was started from (tests that need another use monkeypatch.chdir)."""
    started = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(started)


def _grpo_log_history(steps=6, zero_std=0.0, clipped=0.25, kl=None, rewards=("answer_match", "format_strict")):
    """What TRL 1.14's GRPOTrainer logs per step (the keys the report reads, plus some it ignores), then the
    end-of-training summary. `zero_std`, `clipped` and `kl` are constants or per-step lists."""
    def at(value, i):
        return value[i] if isinstance(value, list) else value

    history = []
    for i in range(steps):
        entry = {"loss": 0.01, "grad_norm": 0.5, "learning_rate": 5e-4, "completions/mean_length": 30.0 - i,
                 "completions/clipped_ratio": at(clipped, i), "reward_std": 0.2, "entropy": 2.0}
        for j, name in enumerate(rewards):
            entry[f"rewards/{name}/mean"] = round(0.1 * i / (j + 1), 3)
            entry[f"rewards/{name}/std"] = 0.1
        entry |= {"reward": 0.2 + 0.05 * i, "frac_reward_zero_std": at(zero_std, i), "step_time": 10.0}
        if kl is not None:
            entry["kl"] = at(kl, i)
        history.append(entry | {"epoch": 0.01 * (i + 1), "step": i + 1})
    history.append({"train_runtime": 60.0, "train_loss": 0.01, "epoch": 0.06, "step": steps})
    return history


@pytest.fixture
def log_history():
    """A builder of hand-made GRPO trainer log histories: `log_history(steps=6, zero_std=1.0, kl=[...])`."""
    return _grpo_log_history


# The Kaggle "Wine Reviews" (winemag-data-130k-v2.csv) columns, and a few reviews invented for the tests: the real
# data stays outside the repository. Row 16 repeats row 15's title (two reviews of one wine), row 13 has no country.
WINEMAG_COLUMNS = ["id", "country", "description", "designation", "points", "price", "province", "region_1",
                   "region_2", "taster_name", "taster_twitter_handle", "title", "variety", "winery"]
WINEMAG_ROWS = [
    ["10", "Italy", "Sour cherry and dried herbs, firm tannins.", "Riserva", "91", "35", "Tuscany", "Chianti Classico",
     "", "Ann Example", "@ann", "Castello Verde 2016 Riserva (Chianti Classico)", "Sangiovese", "Castello Verde"],
    ["11", "Spain", "Ripe plum and vanilla from American oak.", "", "88", "", "Northern Spain", "Rioja", "", "", "",
     "Bodega Luna 2015 Crianza (Rioja)", "Tempranillo", "Bodega Luna"],
    ["12", "Germany", "Slate and lime; off-dry and racy.", "Kabinett", "90", "22", "Mosel", "", "", "", "",
     "Weingut Stein 2019 Kabinett Riesling (Mosel)", "Riesling", "Weingut Stein"],
    ["13", "", "A mystery blend with smoky notes.", "", "84", "12", "", "", "", "", "",
     "Nowhere Cellars NV Red", "Red Blend", "Nowhere Cellars"],
    ["14", "France", "Gooseberry and flint, a long chalky finish.", "", "89", "30.5", "Loire Valley", "Sancerre", "",
     "", "", "Domaine Caillou 2020  Sancerre", "Sauvignon Blanc", "Domaine Caillou"],
    ["15", "US", "Cola and cherry; silky and bright.", "Estate", "92", "45", "Oregon", "Willamette Valley",
     "Willamette Valley", "", "", "Fox Hollow 2018 Estate Pinot Noir (Willamette Valley)", "Pinot Noir", "Fox Hollow"],
    ["16", "US", "The same wine tasted a year later, now earthier.", "Estate", "90", "45", "Oregon",
     "Willamette Valley", "", "", "", "Fox Hollow 2018 Estate Pinot Noir (Willamette Valley)", "Pinot Noir",
     "Fox Hollow"],
    ["17", "Argentina", 'Dark fruit, "big" and plush, with {braces} kept.', "", "87", "18", "Mendoza Province",
     "Mendoza", "", "", "", "Alto Sol 2017 Malbec (Mendoza)", "Malbec", "Alto Sol"],
    ["18", "Portugal", "Fig, walnut and caramel.\nLong and warm.", "10 Year Old Tawny", "93", "40", "Port", "", "", "",
     "", "Quinta do Rio NV 10 Year Old Tawny (Port)", "Port", "Quinta do Rio"],
    ["19", "Australia", "Eucalyptus and mint over blackcurrant.", "", "90", "28", "South Australia", "Coonawarra",
     "", "", "", "Red Gum 2016 Cabernet Sauvignon (Coonawarra)", "Cabernet Sauvignon", "Red Gum"],
]


@pytest.fixture
def winemag_csv(tmp_path):
    """Writes a CSV in the winemag schema into tmp_path: `winemag_csv(rows=..., header=..., name=...)` → its path."""
    import csv

    def write(rows=WINEMAG_ROWS, header=WINEMAG_COLUMNS, name="reviews.csv"):
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
        return path

    return write


@pytest.fixture
def stopped_index_build(monkeypatch):
    """Runs `python -m toolkit.index ARGV` stopped as by Ctrl-C when its `at`-th batch is embedded, and returns the
    command's exit status; the embedder is whole again afterwards."""
    from toolkit import index
    from toolkit.index_store import Index

    def run(argv: list[str], at: int) -> int:
        embed, batches = Index.embed, []

        def stopped(self, texts):
            batches.append(texts)
            if len(batches) == at:
                raise KeyboardInterrupt
            return embed(self, texts)

        monkeypatch.setattr(Index, "embed", stopped)
        try:
            return index.main(argv)
        finally:
            monkeypatch.setattr(Index, "embed", embed)

    return run
