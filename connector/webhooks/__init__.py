"""Webhooks (contract v1.1 §16): the outbox that turns recorded events into deliveries in the
fact's transaction, the worker task that POSTs them signed, retried with backoff, to addresses
the SSRF guard allows. docs/webhooks.md tells the whole story."""
