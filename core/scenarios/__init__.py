"""Scenario models: one :class:`~core.scenarios.base.ScenarioModel` subclass per registry entry."""
