"""Trace-driven autoscaling benchmark: our policy against HPA, KEDA, KubeAI, static peak and an oracle."""
