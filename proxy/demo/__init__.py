"""``ktp demo``: the baseline-and-sandbox scenario on one machine with an embedded broker."""
