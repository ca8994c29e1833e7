"""Neural architecture search for multi-task recommenders: AutoMTL (DESAN search space + PD-DARTS).

* :mod:`mtlrec.nas.architecture`: the versioned, self-describing architecture file (JSON) a search writes and the
  ``automtl`` model (:mod:`mtlrec.models.automtl`) is built from;
* :mod:`mtlrec.nas.supernet`: the DESAN supernet (mixed-op expert blocks, learned expert routing and per-expert
  feature navigators);
* :mod:`mtlrec.nas.search`: the PD-DARTS loop (warm-up, search with progressive discretisation, derivation).

The package imports nothing at import time, so that ``mtlrec.models`` can import the architecture module without a
cycle.
"""
