"""monitor: watches news feeds and alerts on matching items, Persian-aware."""

__version__ = "0.1.0"
