"""lbm-gateway appliance: configuration, CLI, policy (registry, identity, decide), daemons.

This module imports nothing so that `appliance` never forms an import cycle.
"""
