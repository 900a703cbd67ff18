"""Re-creation of the course's batch data API (DESIGN 3.2)."""
