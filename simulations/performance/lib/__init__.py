"""The machinery of simulations.performance's commands (no command lives here)."""
