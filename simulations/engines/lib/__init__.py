"""The machinery of simulations.engines's commands (no command lives here)."""
