"""Learn-Focus-Review: the phase schedule, the gathered loss table, and the rewriter that turns the
table into the next phase's sample index (features → hierarchical clusters → drop → weighted draw)."""
