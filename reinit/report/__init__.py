"""The report: statistics, entries, flags and their renderers (terminal, JSON, CSV, Markdown, plot)."""
