"""Routing: the policy choosing tier and size, prices, the tier catalogue, admission, drift."""
