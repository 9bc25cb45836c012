"""Throughput benchmark of the service against LitServe and a naive FastAPI endpoint."""
