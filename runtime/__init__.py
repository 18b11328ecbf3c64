"""fsac.runtime: `fsac-run`, the line-side daemon. Imports neither torch nor open_clip."""
