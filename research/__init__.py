"""gor_det research: the benchmark harness, its suites, results and report, and the balancers that lost."""
