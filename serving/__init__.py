"""The online side: a Litestar router that serves the registered model by alias and A/B-splits users."""
