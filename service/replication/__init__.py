"""Replication of journals to standbys over NATS JetStream (docs/REPLICATION.md).

``publisher``: the primary side, one per journal; ``follower``: ``ackwal follow``; ``promote``:
``ackwal promote``; ``epoch``: the fencing epoch; ``stream``: names, headers and NATS helpers.
"""
