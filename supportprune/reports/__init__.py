"""What a run tells its reader: the run report (report.md) and its plots."""
