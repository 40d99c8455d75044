"""The kopf shell: everything that talks to the cluster, and nothing that decides.

``run`` starts the process (kopf, the controller loop, /healthz and /metrics); ``handlers`` holds
the kopf registrations and settings; ``loop`` is the controller that reads the world from its
watch-fed caches, calls the pure core (``reconcile``) and applies the result; ``kube`` is the only
API client; ``peering`` says which replica of an HA install is active; ``opmetrics`` is the
operator's own Prometheus metrics; ``health`` turns pods, nodes and events into the first problem a
person can act on.
"""
