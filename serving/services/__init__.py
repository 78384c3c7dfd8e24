"""Services of the router: arm assignment, model source, inference store."""
