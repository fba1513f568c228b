"""The in-process Grid lives in simulations/inprocess.py (the attack benchmark runs on it too)."""

from simulations.inprocess import SERVER_NODE_ID, LocalGrid

__all__ = ["LocalGrid", "SERVER_NODE_ID"]
