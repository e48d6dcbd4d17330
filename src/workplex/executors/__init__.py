"""The built-in executors, one module each. They are registered through the
``workplex.executors`` entry points in ``pyproject.toml``, like any plugin."""
