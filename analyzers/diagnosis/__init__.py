"""Diagnosis: verdicts, what-if attribution, onsets, aggregates and rank scores over the frames."""
