"""Challenge solvers: how certkeeper proves control of a name to the CA."""
