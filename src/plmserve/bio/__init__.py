"""Pure domain code: alphabets, sequence validation, mutation codes, sequence/MSA file I/O."""
