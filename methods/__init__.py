"""Methods: one file per method (student, teacher, kd, ...) plus the shared network blocks in blocks.py."""
