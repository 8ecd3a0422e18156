"""endpoints: see the README module table."""
