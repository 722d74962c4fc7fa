"""What tests and benchmarks use in place of a model (``EchoEngine``)."""
