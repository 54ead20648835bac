"""Metrics of the study: FID/KID through clean-fid, plus the feature extractors they share."""
