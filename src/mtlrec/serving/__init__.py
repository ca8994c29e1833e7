"""Serving: runners behind one interface, models loaded from a repository, the server, batch scoring, clients."""
