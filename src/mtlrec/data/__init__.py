"""Data: loaders for upstream formats, the fitted preprocessor, encoded splits and fast batching."""
