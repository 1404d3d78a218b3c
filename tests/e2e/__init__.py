"""End-to-end tests: real server processes, real sockets, injected faults."""
