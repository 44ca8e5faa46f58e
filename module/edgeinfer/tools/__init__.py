"""Operator and developer tools: local broker, sensor simulator, demo."""
