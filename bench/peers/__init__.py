"""Other frameworks doing the benchmark rows' work: the peer column of the tables."""
