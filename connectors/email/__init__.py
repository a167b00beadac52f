"""The built-in email connector."""

__all__: list[str] = []
