"""``ktp demo``: the seeds' scenario on one machine with an embedded broker."""
