"""The `lbm` command line: one click group per concern, composed in `main`."""
