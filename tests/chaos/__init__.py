"""The chaos suite (issue 16, item 5): the real daemon under injected faults, and its Reliability table."""
