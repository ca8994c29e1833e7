"""Batch-scoring engines beyond one process (the local engine lives in :mod:`mtlrec.serving.score`)."""
