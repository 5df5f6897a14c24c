"""tomolock benchmarks (``make bench``): JSON results, ratios against baselines in the same run."""
