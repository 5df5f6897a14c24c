"""FastAPI service: status, history, metrics, control, live feed, dashboard."""
