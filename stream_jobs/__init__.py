"""Thin PyFlink wiring of the operators: sources, sinks, keying, state, timers, job entry points."""
