"""Students distilled from the cache's teachers."""
