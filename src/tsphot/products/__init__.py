"""Products of a run: tables and exports, pictures, report.html and stack bundles."""
