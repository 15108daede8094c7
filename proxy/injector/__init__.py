"""The injector: a mutating admission webhook that adds the sidecar to annotated pods.

- ``patch.py``    pure: a pod and the injector's sidecar template → ``Inject`` (a JSONPatch),
                  ``Pass`` (unchanged) or ``Refuse`` (a message naming the bad annotation)
- ``review.py``   pure: an ``admission.k8s.io/v1`` AdmissionReview in, its response out
- ``config.py``   ``ktp injector serve`` options and :class:`InjectorConfig`
- ``server.py``   the HTTPS listener (aiohttp) serving ``POST /inject`` and ``GET /healthz``
- ``command.py``  ``ktp injector serve``

Teams that do not want a webhook include the Helm chart's ``kafka-tenant-proxy.sidecar``
template in their own pod spec instead; the tests check that both give the same container.
"""
