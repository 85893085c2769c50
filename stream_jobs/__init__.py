"""The Flink jobs and nothing else: sources, sinks, keying, state, timers and the jobs' entry points.
Each Flink function is a shell around a plain-Python class from ``operators/``."""
