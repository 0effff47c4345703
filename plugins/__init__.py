"""gate's built-in validators, installed as ``gate_plugins`` and registered by entry point."""
