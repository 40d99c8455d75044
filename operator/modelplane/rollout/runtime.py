"""The rollout's I/O: run one evaluation order (the suite over HTTP, or a custom evaluator Job).

The pure core (``modelplane.rollout.driver``) decides WHEN to evaluate and against which pods; this module
does it, in an asyncio task the controller owns:

* **suite**: read the suite from its ConfigMap, send every case to the canary pod and to a stable pod
  by pod IP (``rollout.evaluate.run_evaluation``: same cases, same sampling, bounded concurrency,
  timeouts, retries), decide with the paired gate (``rollout.stats.evaluate_gate``) and write the
  report ConfigMap ``<md>-eval-<fingerprint[:8]>`` (owner-referenced: it goes with the object);
  cases graded ``judge`` are graded by a Ready pod of the ModelDeployment ``evaluation.judge``
  names (``judge_endpoint``);
* **custom evaluator**: create a Job (owner-referenced) that receives the canary's and stable's
  URLs in its environment, and read its score back — from the output ConfigMap ``<job>-result``
  (key ``result``), which the evaluator may write, or else from the Job pod's termination message —
  as JSON ``{"score": x, "baseline": y}`` or a plain number. A Job reports aggregates only, so its
  gate is the floor (``minScore``) and ``score >= baseline - maxRegression``; no confidence bound.

Both return an ``EvalResult``; any failure raises ``EvaluationError`` with a message that ends up in
the rollout's condition (the machine retries it, 3 attempts in all).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from modelplane import render
from modelplane.api.models import API_VERSION
from modelplane.controller import kube
from modelplane.rollout import power
from modelplane.rollout.driver import EvaluationOrder, ready_pod_url
from modelplane.rollout.evaluate import Endpoint, EvaluationRun, OpenAIJudge, run_evaluation
from modelplane.rollout.machine import EvalResult
from modelplane.rollout.stats import GateResult, evaluate_gate
from modelplane.rollout.suite import SuiteError, parse_suite

#: How often a Job evaluator's progress is read.
JOB_POLL_SECONDS = 1.0
#: After the Job succeeded, how long to wait for its output ConfigMap when there is no termination message.
JOB_RESULT_GRACE_SECONDS = 30.0
#: The Job's whole run (image pull, evaluation) is bounded by this.
JOB_DEADLINE_SECONDS = 3600
RESULT_KEY = "result"


class EvaluationError(Exception):
    """The evaluation could not produce a verdict (it is retried by the state machine)."""


def _owner(order: EvaluationOrder) -> list[dict[str, Any]]:
    return [{"apiVersion": API_VERSION, "kind": order.owner_kind, "name": order.md_name, "uid": order.md_uid,
             "controller": True, "blockOwnerDeletion": True}]


def _labels(order: EvaluationOrder) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "modelplane", "app.kubernetes.io/component": "evaluation",
            "modelplane.dev/model-deployment": order.md_name, "modelplane.dev/fingerprint": order.revision}


def build_report(order: EvaluationOrder, gate: GateResult, run: EvaluationRun) -> dict[str, Any]:
    """The report ConfigMap of one suite evaluation: the gate's numbers and every failing case."""
    errors = {a.case_id: a.error for a in run.canary if a.error}
    equal_pass = None
    if gate.discordance is not None:
        equal_pass = power.pass_probability(max(gate.total, 1), max_regression=gate.max_regression,
                                            confidence=gate.confidence, discordance=gate.discordance)
    report = {
        "revision": order.label, "fingerprint": order.revision, "stableFingerprint": order.stable_revision,
        "attempt": order.attempt, "passed": gate.passed, "verdict": gate.verdict.value, "reason": gate.reason,
        "cases": gate.n, "suiteCases": gate.total, "excludedCases": gate.excluded,
        "canaryErrorCount": gate.canary_errors, "stableErrorCount": gate.stable_errors,
        "maxErrorRate": gate.max_error_rate, "discordance": gate.discordance,
        "equalCanaryPassProbability": equal_pass,
        "canaryScore": gate.canary_score, "stableScore": gate.stable_score, "difference": gate.diff,
        "lowerBound": gate.lower_bound, "confidence": gate.confidence, "minScore": gate.min_score,
        "maxRegression": gate.max_regression, "canaryOnly": gate.canary_only, "stableOnly": gate.stable_only,
        "failingCases": list(gate.failing_case_ids),
        "canaryErrors": errors,
        "stableErrors": {a.case_id: a.error for a in run.stable if a.error},
    }
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": order.report_name, "namespace": order.namespace, "labels": _labels(order),
                     "ownerReferences": _owner(order)},
        "data": {"report.json": json.dumps(report, indent=1, sort_keys=True), "summary": gate.reason},
    }


def build_job(order: EvaluationOrder) -> dict[str, Any]:
    """The custom evaluator's Job: one pod, never restarted, the endpoints in its environment."""
    assert order.evaluator is not None
    container: dict[str, Any] = {
        "name": "evaluator", "image": order.evaluator.image,
        "env": [{"name": "CANARY_URL", "value": f"{order.canary_url}/v1"},
                {"name": "STABLE_URL", "value": f"{order.stable_url}/v1"},
                {"name": "MODEL", "value": order.served_name},
                {"name": "CANARY_MODEL", "value": order.canary_served_name or order.served_name},
                {"name": "RESULT_CONFIGMAP", "value": f"{order.job_name}-result"},
                {"name": "RESULT_NAMESPACE", "value": order.namespace}],
        # The score comes back in /dev/termination-log, or in the log's last line if the evaluator
        # fails without writing it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if order.evaluator.command:
        container["command"] = list(order.evaluator.command)
    if order.evaluator.args:
        container["args"] = list(order.evaluator.args)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": order.job_name, "namespace": order.namespace, "labels": _labels(order),
                     "ownerReferences": _owner(order)},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": JOB_DEADLINE_SECONDS,
                 "ttlSecondsAfterFinished": 86400,
                 "template": {"metadata": {"labels": _labels(order)},
                              "spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


def parse_score(text: str) -> tuple[float, float | None]:
    """``{"score": x, "baseline": y}`` (baseline optional) or a plain number → (score, baseline)."""
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        raise EvaluationError(f"the evaluator's result is neither JSON nor a number: {text[:200]!r}") \
            from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), None
    if isinstance(value, Mapping) and isinstance(value.get("score"), int | float):
        baseline = value.get("baseline")
        return float(value["score"]), float(baseline) if isinstance(baseline, int | float) else None
    raise EvaluationError(f"the evaluator's result has no numeric score: {text[:200]!r}")


def job_verdict(order: EvaluationOrder, score: float, baseline: float | None) -> EvalResult:
    """The gate for a Job's aggregate score: the floor, and no regression beyond the margin."""
    floor_ok = score >= order.min_score
    regression_ok = baseline is None or score >= baseline - order.max_regression - 1e-9
    if not floor_ok:
        reason = f"evaluator score {score:.3f} is below the floor minScore {order.min_score:.3f}"
    elif not regression_ok:
        reason = (f"evaluator score {score:.3f} is more than maxRegression {order.max_regression:.3f} "
                  f"below the baseline {baseline:.3f}")
    else:
        versus = f" vs baseline {baseline:.3f}" if baseline is not None else ""
        reason = f"evaluator score {score:.3f}{versus} clears the floor {order.min_score:.3f}"
    return EvalResult(passed=floor_ok and regression_ok, reason=reason, canary_score=score,
                      stable_score=baseline, lower_bound=None if baseline is None else score - baseline)


async def run_suite(client: kube.Kube, http: aiohttp.ClientSession, order: EvaluationOrder) -> EvalResult:
    if order.canary_url is None or order.stable_url is None:
        missing = "canary" if order.canary_url is None else "stable"
        raise EvaluationError(f"no ready {missing} pod to evaluate")
    if not order.suite_config_map:
        raise EvaluationError("spec.rollout.evaluation has neither suiteRef nor evaluator")
    cm = await client.get(kube.CONFIGMAPS, order.suite_config_map, namespace=order.namespace)
    text = ((cm or {}).get("data") or {}).get(order.suite_key)
    if cm is None:
        raise EvaluationError(f"suite ConfigMap {order.suite_config_map} not found")
    if not text:
        raise EvaluationError(f"suite ConfigMap {order.suite_config_map} has no key {order.suite_key}")
    try:
        suite = parse_suite(text, source=f"{order.suite_config_map}/{order.suite_key}")
    except SuiteError as exc:
        raise EvaluationError(str(exc)) from None
    judge = None
    if suite.needs_judge:
        if not order.judge:
            raise EvaluationError(f"suite {order.suite_config_map} has cases graded by a judge, but "
                                  "spec.rollout.evaluation.judge names no ModelDeployment")
        judge = OpenAIJudge(await judge_endpoint(client, order.namespace, order.judge), session=http,
                            timeout_seconds=order.timeout_seconds)
    canary_model = order.canary_served_name or order.served_name
    run = await run_evaluation(suite=suite, canary=Endpoint(order.canary_url, canary_model),
                               stable=Endpoint(order.stable_url, order.served_name),
                               concurrency=order.concurrency, timeout_seconds=order.timeout_seconds,
                               judge=judge, session=http)
    gate = evaluate_gate(run.outcomes, min_score=order.min_score, max_regression=order.max_regression,
                         confidence=order.confidence, max_error_rate=order.max_error_rate)
    await client.apply(build_report(order, gate, run))
    return EvalResult.from_gate(gate)


async def judge_endpoint(client: kube.Kube, namespace: str, name: str) -> Endpoint:
    """A Ready pod of the judge ModelDeployment ``name``, with the model name it serves.

    Listed (by name) rather than read: the operator's role lists ModelDeployments, it does not get them.
    """
    found = await client.list(kube.MODELDEPLOYMENTS, namespace=namespace,
                              field_selector=f"metadata.name={name}")
    if not found:
        raise EvaluationError(f"judge ModelDeployment {name} not found in namespace {namespace}")
    model = (found[0].get("spec") or {}).get("model") or {}
    served = str(model.get("servedName") or name)
    pods = await client.list(kube.PODS, namespace=namespace,
                             label_selector=f"{render.LABEL_MODEL_DEPLOYMENT}={name}")
    url = ready_pod_url(pods)
    if url is None:
        raise EvaluationError(f"judge ModelDeployment {name} has no Ready pod")
    return Endpoint(url, served)


async def _termination_message(client: kube.Kube, order: EvaluationOrder) -> str | None:
    pods = await client.list(kube.PODS, namespace=order.namespace,
                             label_selector=f"job-name={order.job_name}")
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((status.get("state") or {}).get("terminated") or {}).get("message")
            if message and message.strip():
                return str(message)
    return None


async def run_job(client: kube.Kube, order: EvaluationOrder) -> EvalResult:
    if order.canary_url is None or order.stable_url is None:
        raise EvaluationError("no ready canary or stable pod for the evaluator")
    try:
        await client.create(build_job(order))
    except kube.Conflict:
        pass  # created by an earlier try of this attempt: read it
    succeeded_at: float | None = None
    while True:
        out = await client.get(kube.CONFIGMAPS, f"{order.job_name}-result", namespace=order.namespace)
        text = ((out or {}).get("data") or {}).get(RESULT_KEY)
        if text:
            return job_verdict(order, *parse_score(text))
        job = await client.get(kube.JOBS, order.job_name, namespace=order.namespace)
        if job is None:
            raise EvaluationError(f"evaluator Job {order.job_name} disappeared")
        status = job.get("status") or {}
        if status.get("failed"):
            message = await _termination_message(client, order)
            raise EvaluationError(f"evaluator Job {order.job_name} failed" + (f": {message[:300]}" if message
                                                                                 else ""))
        if status.get("succeeded"):
            message = await _termination_message(client, order)
            if message:
                return job_verdict(order, *parse_score(message))
            succeeded_at = succeeded_at or time.monotonic()
            if time.monotonic() - succeeded_at > JOB_RESULT_GRACE_SECONDS:
                raise EvaluationError(f"evaluator Job {order.job_name} succeeded without a score (no "
                                      f"termination message, no ConfigMap {order.job_name}-result)")
        await asyncio.sleep(JOB_POLL_SECONDS)


async def run_order(client: kube.Kube, http: aiohttp.ClientSession, order: EvaluationOrder) -> EvalResult:
    """Run one evaluation order to a verdict; raises ``EvaluationError`` (or a transport error)."""
    if order.evaluator:
        return await run_job(client, order)
    return await run_suite(client, http, order)
