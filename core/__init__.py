"""The pure core of Escalier: the model, the policy, validation, the engine, the hook specs.

Nothing in this package touches the network, a database, the clock or the environment; time and
configuration come in as arguments.
"""

__all__: list[str] = []
