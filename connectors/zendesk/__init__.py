"""The built-in zendesk connector."""

__all__: list[str] = []
