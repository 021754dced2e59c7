"""Shared library of the StreamSpace control plane: everything the gateway, dispatcher and agent agree on."""
