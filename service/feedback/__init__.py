"""Feedback: correction setpoints, safety interlocks, publication to motors."""
