-- Forward every new CR or DX instance to the medfl agent (the modality named "medfl" in
-- Orthanc's DicomModalities). Instances sent by Lua itself and the agent's own Structured
-- Reports (modality SR) are not forwarded, so nothing loops.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if origin['RequestOrigin'] ~= 'Lua' and (modality == 'CR' or modality == 'DX') then
    SendToModality(instanceId, 'medfl')
  end
end
