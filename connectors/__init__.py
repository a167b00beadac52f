"""The built-in connectors, registered through the ``escalier`` entry-point group like any plugin."""

__all__: list[str] = []
