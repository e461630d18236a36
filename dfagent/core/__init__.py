"""Pure values shared by every layer: digests, byte ranges, piece arithmetic. No I/O here."""
