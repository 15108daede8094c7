"""Delivery: headers, retry policy, lanes and dead letters for records the filter lets through."""
