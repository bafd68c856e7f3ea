"""Fault-injection harness: kill the demo run at random instants and check that it converges."""
