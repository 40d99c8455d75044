-- Argo CD health check for modelplane.dev/ModelDeployment (resource.customizations.health).
-- Healthy: phase Ready or ScaledToZero, the operator has seen the latest spec, no rollout under way.
-- Progressing: not reconciled yet, a spec the operator has not seen yet, Pending/Progressing, or a
-- canary rollout running. Suspended: a rollout paused (by a user or by inconclusive analysis).
-- Degraded: phase Degraded or Failed, with the Degraded (or Ready) condition's reason and message.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c == nil then
    return nil
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the modelplane operator to reconcile it"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to see generation " .. generation ..
    " (status is of generation " .. status.observedGeneration .. ")"
  return hs
end

local canary = status.canary
if canary ~= nil and canary.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Rollout of " .. (canary.revision or "the new revision") .. " paused at " ..
    (canary.weight or 0) .. "% of replicas"
  if canary.message ~= nil and canary.message ~= "" then
    hs.message = hs.message .. ": " .. canary.message
  end
  return hs
end

local phase = status.phase
if phase == "Degraded" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(condition(status, "Degraded")) or describe(condition(status, "Ready")) or phase
  return hs
end

local rolling = {Deploying = true, Evaluating = true, Stepping = true, Analyzing = true,
                 Promoting = true, RollingBack = true}
if canary ~= nil and rolling[canary.phase] then
  hs.status = "Progressing"
  hs.message = "Rollout of " .. (canary.revision or "the new revision") .. ": " .. canary.phase ..
    " at " .. (canary.weight or 0) .. "% of replicas"
  return hs
end

if phase == "Ready" or phase == "ScaledToZero" then
  hs.status = "Healthy"
  hs.message = describe(condition(status, "Ready")) or phase
  return hs
end

hs.status = "Progressing"
hs.message = describe(condition(status, "Ready")) or ("Phase " .. (phase or "unknown"))
return hs
