"""storage: see the README module table."""
