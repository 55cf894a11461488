"""The composition root: settings, the `chorus` CLI, and the embedded process supervisor.

The only package allowed to import all the others.
"""
