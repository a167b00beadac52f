"""The built-in jira connector."""

__all__: list[str] = []
