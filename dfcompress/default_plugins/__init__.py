"""Built-in plugins. Each module is an ordinary plugin implementing the hooks of :mod:`dfcompress.hookspecs`;
targets are lazy ``"module:Class"`` strings so that listing them imports no torch."""
