-- Health of a tailor.dev/ModelDeployment.
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

if phase == "RolledBack" then
  hs.status = "Degraded"
  local rolled = condition("RolledBack")
  local reason = describe(rolled, nil)
  if reason == nil and obj.status.history ~= nil and #obj.status.history > 0 then
    local last = obj.status.history[#obj.status.history]
    if last.reason ~= nil and last.reason ~= "" then
      reason = "revision " .. tostring(last.revision) .. ": " .. last.reason
    end
  end
  hs.message = "Canary rolled back: " .. (reason or "analysis failed")
  return hs
end
if phase == "Degraded" or (degraded ~= nil and degraded.status == "True") then
  hs.status = "Degraded"
  hs.message = describe(degraded or condition("Ready"), "Serving is degraded")
  return hs
end
if phase == "Paused" then
  hs.status = "Suspended"
  local analysis = obj.status.lastAnalysis
  local why = describe(condition("Progressing"), nil)
  if why == nil and analysis ~= nil and analysis.message ~= nil and analysis.message ~= "" then
    why = analysis.message
  end
  hs.message = "Canary paused: " .. (why or "waiting for a human")
  return hs
end
if phase == "Healthy" then
  hs.status = "Healthy"
  local msg = "Serving revision " .. tostring(obj.status.stableRevision or "?")
  if obj.status.endpoint ~= nil then
    msg = msg .. " at " .. obj.status.endpoint
  end
  hs.message = msg
  return hs
end
hs.status = "Progressing"
if obj.status.canaryRevision ~= nil then
  local msg = string.format("Canary %s at %d%%", obj.status.canaryRevision, obj.status.canaryWeight or 0)
  if obj.status.currentStep ~= nil and obj.spec ~= nil and obj.spec.rollout ~= nil and obj.spec.rollout.steps ~= nil then
    msg = msg .. string.format(" (step %d of %d)", obj.status.currentStep + 1, #obj.spec.rollout.steps)
  end
  hs.message = msg
  return hs
end
hs.message = describe(condition("Progressing") or condition("Ready"), "Rolling out")
return hs
