"""Reports: the self-contained report.html of a run (html) and its figures (figures)."""
