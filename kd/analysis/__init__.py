"""Compare results with the published tables, report, look numbers up: reads lines, never trains."""
