"""upstream: see the README module table."""
