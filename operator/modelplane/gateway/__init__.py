"""The gateway: the request path, one OpenAI-compatible endpoint for every ModelDeployment.

It reads (never writes) ModelDeployments, their EndpointSlices, pods and Deployments through
watches, and carries each request to a ready replica: by the body's ``model``, by the canary's
weight, to the least loaded replica, holding requests while none is ready. One file per concern:

- ``table``: the routing table built from the watched objects (pure);
- ``routing``: a request's model and session, and the model it names (pure);
- ``weights``: canary or stable, per request (pure);
- ``picking``: which replica of the group (pure);
- ``streaming``: spotting a stream's first token (pure);
- ``cache``: the watches that keep the table current, or a fixed table;
- ``activator``: holding requests while no replica is ready;
- ``proxy``: sending a request and relaying its answer;
- ``errors``, ``metrics``, ``server`` (the HTTP app), ``run`` (``modelplane gateway``).
"""
