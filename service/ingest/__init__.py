"""Ingest: ZMQ receivers for detector frames and bluesky documents."""
