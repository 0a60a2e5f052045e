"""Bulk inference: `agelens batch`, the service's face path and model without HTTP, on one machine
(a process per core) or on a Ray cluster (Ray Data, an actor pool)."""
