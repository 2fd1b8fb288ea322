"""The HTTP doors: the native REST API, batches, admin actions, listing, pages, the edge and its middlewares."""
