"""Real components for the demo, tests and benchmarks: the embedded broker and small apps."""
