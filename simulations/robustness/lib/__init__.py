"""The machinery of simulations.robustness's commands (no command lives here)."""
