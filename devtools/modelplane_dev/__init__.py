"""modelplane's developer tools, installed apart from the operator (``pip install -e .`` at the
repository root; the Makefile does it): the vLLM simulator (``sim``), the dev cluster
(``devcluster``), the demo (``demo``) and the load generator (``loadgen``). None of it ships in the
operator image. Their subcommands join the ``modelplane`` command through the
``modelplane.commands`` entry points.
"""
