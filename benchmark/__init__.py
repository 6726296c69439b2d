"""The benchmark suite: daemons, synthetic images, cluster backends, scenarios and reports."""
