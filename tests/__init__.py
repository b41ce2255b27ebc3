"""The test suite of token-sidecar: real servers on loopback, virtual time, no mocks."""
