"""Model families. Nothing in this package knows about HTTP or jobs."""
