"""Thin adapters from the gRPC API to the domain packages: no logic lives here."""
