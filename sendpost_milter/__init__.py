"""The milter: records queue ID -> X-Sendpost-Message-UUID at receive time.

Delivery guarantee: none needed for mail, since it never rejects, defers or slows a
message (Postfix runs it with default_action=accept). For the map: a row is committed
before the end-of-message reply, so it exists before Postfix can log any delivery.
"""
