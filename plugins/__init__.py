"""The runner's built-in plugins, each registered through the ``runner`` entry-point group."""
