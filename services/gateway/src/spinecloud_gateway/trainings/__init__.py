"""Training jobs through the API: start (enqueued by task name), list, follow, cancel, retry."""
