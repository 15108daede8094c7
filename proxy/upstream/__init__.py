"""Our upstream: the app, reached over localhost HTTP, and its health."""
