"""The ``mtlrec`` command line: thin commands over the library."""
