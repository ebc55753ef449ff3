"""Products of a run: tables, exports, plots."""
