"""What the tests and the benchmarks both stand on, and nothing ships: the deterministic
test engine (`doubles`: a stand-in for vLLM, named as such) and the simulated TEE's
attested sources and reference values (`attested`)."""
