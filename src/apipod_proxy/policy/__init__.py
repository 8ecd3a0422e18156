"""policy: see the README module table."""
