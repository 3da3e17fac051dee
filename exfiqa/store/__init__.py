"""The interface between the two stages: the run description, the per-sample arrays and input digests.

Extraction writes what this describes; evaluation reads it. No torch."""
