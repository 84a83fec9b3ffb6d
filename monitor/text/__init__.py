"""Text handling: display text for people, match keys for machines."""
