"""pipeline: see the README module table."""
