"""The machinery of simulations.benchmark's commands (no command lives here)."""
