"""`specgen bench`: the workload (suites, configurations), the interleaved runner, the reports."""
