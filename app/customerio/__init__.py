"""Customer.io Track API: client, batching, rate limit, outcome policy and delivery loop."""
