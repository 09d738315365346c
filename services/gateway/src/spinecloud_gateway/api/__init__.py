"""HTTP layer: dependencies and routers (one module per domain)."""
