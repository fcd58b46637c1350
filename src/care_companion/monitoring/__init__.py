"""Monitoring: Prometheus metrics of the service (and, later, reference profiles and drift tests)."""
