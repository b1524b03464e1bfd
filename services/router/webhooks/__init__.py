"""Webhooks: each tenant's endpoints, the events they are told of, signed as Standard Webhooks
has it, delivered at least once from a durable outbox in the router's store.

The parts, from the request to the receiver: `model` (records and event types), `targets`
(which URLs and addresses may be called), `signing` (secrets and signatures), `payloads` (the
JSON of each event), `schedule` (retries and pausing, as rules), `store` (endpoints and the
outbox, on the router's database), `dispatcher` (the loop that fans events out and sends them
over httpx) and `admin` (the RPCs).
"""
