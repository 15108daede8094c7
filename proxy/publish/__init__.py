"""The publish endpoint: ``POST /v1/publish/<topic>`` lets the app produce without a Kafka client
and keep its delivery's tenant without OpenTelemetry.

- :mod:`.request`   a request turned into a record: validation, context, default tenant (pure)
- :mod:`.server`    the HTTP listener and the Kafka producer behind it
"""
