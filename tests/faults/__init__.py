"""Pure-logic history model and checkers (linearizability, list-append, bank) for fault tests."""
