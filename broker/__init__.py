"""The Redis broker seam: encoding and the read-only view of queues in Redis.

Guarantees: messages are encoded as msgpack (default) or JSON, never pickled; the
queue inspection here reads Redis without changing it. `config/broker.py` is the one
place that chooses the broker class.
"""
