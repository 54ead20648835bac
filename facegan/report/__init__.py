"""The comparison report, rendered from the metrics files alone."""
