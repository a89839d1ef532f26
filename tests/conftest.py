"""Shared test set-up: tests never reach a model hub (everything they load ships inside installed packages)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
