"""The built-in demo: generated clips, the whole pipeline on them, the claims of both papers, the report."""
