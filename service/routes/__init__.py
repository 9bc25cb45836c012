"""HTTP routes, split by concern."""

from service.routes import inference, ops

ROUTERS = (ops.router, inference.router)
