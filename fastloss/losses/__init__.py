"""The built-in losses, one module per family: their math, options and documentation."""
