"""mtlrec: train, export, serve and load-test multi-task and multi-scenario recommenders."""

__version__ = "0.1.0"
