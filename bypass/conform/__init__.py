"""`bypass conform`: the kernel as the oracle for an agent (differential testing of file calls)."""
