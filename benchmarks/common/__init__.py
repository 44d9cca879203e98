"""Shared by the benchmark scripts: the summary `make bench` prints at the end."""
