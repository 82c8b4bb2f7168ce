"""Tasks: one file per task (synthetic, biovid, affwild2, ...): loader, mimic writer, splits, metrics."""
