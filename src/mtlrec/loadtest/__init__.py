"""Load tests and latency benchmarks of served models: locust runs, in-process runner latency, reports and plots.

* :mod:`mtlrec.loadtest.runner`: ``mtlrec loadtest`` (a bounded, loopback-only locust run, optionally starting
  ``mtlrec serve``);
* :mod:`mtlrec.loadtest.latency`: ``mtlrec bench latency`` (the in-process floor of each runtime);
* :mod:`mtlrec.loadtest.report`, :mod:`mtlrec.loadtest.plots`: percentiles from raw timings, ``report.json``, PNGs;
* :mod:`mtlrec.loadtest.payloads`: realistic requests generated from an exported model's schema.

locust and matplotlib are optional (``pip install 'mtlrec[load]'``) and imported only where they are used.
"""
