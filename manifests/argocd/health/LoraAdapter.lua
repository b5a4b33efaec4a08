-- Health of a tailor.dev/LoraAdapter.
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
  hs.message = describe(degraded or condition("Ready"), "Adapter verification failed")
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Adapter is degraded")
  return hs
end
if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = describe(condition("Ready"), "Adapter verified")
  return hs
end
hs.status = "Progressing"
hs.message = describe(condition("Progressing") or condition("Ready"), "Adapter is " .. tostring(phase or "Pending"))
return hs
