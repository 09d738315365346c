"""Infrastructure the domains share: errors, logging, middleware, metrics. Imports no domain."""
