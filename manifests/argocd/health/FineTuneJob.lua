-- Health of a tailor.dev/FineTuneJob.
-- Argo CD runs this with the live object as the global `obj` (gopher-lua: Lua 5.1
-- semantics, no os/io) and reads back {status, message}. Installed into argocd-cm by
-- ../argocd-cm-patch.yaml, which must hold this file verbatim (api/tests/argocd.rs checks it).
local hs = {}

local function condition(ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

-- The condition's message, else its reason, else the fallback.
local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

-- A status (or condition) written for an older generation says nothing about the current
-- spec: the operator has not caught up yet, which is progress, not health.
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local function stale(observed)
  return generation ~= nil and (observed == nil or observed < generation)
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the tailor operator to report status"
  return hs
end
if stale(obj.status.observedGeneration) then
  hs.status = "Progressing"
  hs.message = "Waiting for the tailor operator to observe generation " .. tostring(generation)
  return hs
end
for _, ctype in ipairs({ "Ready", "Degraded" }) do
  local c = condition(ctype)
  if c ~= nil and c.observedGeneration ~= nil and stale(c.observedGeneration) then
    hs.status = "Progressing"
    hs.message = "Waiting for the tailor operator to update the " .. ctype .. " condition to generation " .. tostring(generation)
    return hs
  end
end

local phase = obj.status.phase
local degraded = condition("Degraded")

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(degraded or condition("Ready"), "Training failed")
  return hs
end
if phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = describe(condition("Ready"), "Training was cancelled")
  return hs
end
if phase == "Succeeded" then
  hs.status = "Healthy"
  local adapter = obj.status.adapterRef
  if adapter ~= nil and adapter.name ~= nil and obj.status.validationLoss ~= nil then
    local msg = string.format("Trained adapter %s: validation loss %.4f", adapter.name, obj.status.validationLoss)
    if obj.status.baseValidationLoss ~= nil then
      msg = msg .. string.format(" (base model %.4f)", obj.status.baseValidationLoss)
    end
    local judge = obj.status.evaluation ~= nil and obj.status.evaluation.judge or nil
    if judge ~= nil and judge.winRate ~= nil then
      msg = msg .. string.format("; win rate %.2f over %d judged pairs", judge.winRate, judge.judged or 0)
    end
    hs.message = msg
  else
    hs.message = describe(condition("Ready"), "Training succeeded")
  end
  return hs
end
-- Kueue-style: a suspended job that has not started is parked on purpose.
if obj.spec ~= nil and obj.spec.suspend == true and (phase == nil or phase == "Pending" or phase == "ValidatingData" or phase == "Queued") then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend is true)"
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Training is degraded")
  return hs
end
hs.status = "Progressing"
local progress = obj.status.progress
if phase == "Running" and progress ~= nil and progress.totalSteps ~= nil and progress.totalSteps > 0 then
  local msg = string.format("Training: step %d/%d", progress.step or 0, progress.totalSteps)
  if progress.trainLoss ~= nil then
    msg = msg .. string.format(", train loss %.4f", progress.trainLoss)
  end
  hs.message = msg
  return hs
end
local scheduled = condition("Scheduled")
if scheduled ~= nil and scheduled.status == "False" then
  hs.message = describe(scheduled, "Waiting for the trainer pod to be scheduled")
  return hs
end
hs.message = describe(condition("Progressing") or condition("Ready"), "Training is " .. tostring(phase or "Pending"))
return hs
