"""tomolock service: ingest, drift estimation, drift model, feedback, record and API."""
